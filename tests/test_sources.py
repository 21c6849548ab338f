"""trainer/sources.py and trainer/streaming.py: hub sources through a loopback hub, offline.

The loopback server speaks the part of the hub's HTTP API that the pipeline calls through
huggingface_hub: the commit of a revision, the paged tree of a folder, and file bytes behind
the resolve URL (a redirect to a content URL that honours Range, as the hub's CDN does).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer import prepare as prep
from trainer import sources, streaming
from trainer.prepare import PrepareError

REPO_ROOT = Path(__file__).resolve().parent.parent
SECRET = bytes(range(32))
COMMIT = "c0ffee" * 6 + "abcd"  # 40 hex digits

# ---------------------------------------------------------------- synthetic text


def make_texts(count: int, seed: int, words_per_doc: tuple[int, int] = (60, 160)) -> list[str]:
    """Documents of pseudo-words (a few thousand distinct words, so BPE finds real merges)."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "ta", "shi", "vor", "el", "an", "qu", "é", "ß"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(2000)]
    texts = []
    for _ in range(count):
        n = rng.randint(*words_per_doc)
        body = " ".join(rng.choice(words) for _ in range(n))
        texts.append(body.capitalize() + f". In {rng.randint(1000, 2099)}.")
    return texts


def write_parquet(path: Path, texts: list[str], row_group_size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": list(range(len(texts))), "text": texts})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


# ---------------------------------------------------------------- the loopback hub


class LoopbackHub:
    """A hub on 127.0.0.1: repos {repo_id: {path: bytes}} at COMMIT, with a request log.

    `stall[path] = n` makes the content URL send n bytes of that file, then wait until
    `release` is set (and close): an interrupted download, for as long as the test wants.
    """

    def __init__(self, repos: dict[str, dict[str, bytes]], page_size: int = 2) -> None:
        self.repos = repos
        self.page_size = page_size
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range)
        self.stall: dict[str, int] = {}
        self.release = threading.Event()
        self.blobs = {
            hashlib.sha256(data).hexdigest(): (path, data)
            for files in repos.values()
            for path, data in files.items()
        }
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return None

            def do_HEAD(self) -> None:
                self.handle_request(send_body=False)

            def do_GET(self) -> None:
                self.handle_request(send_body=True)

            def reply_json(self, status: int, body: object, headers: dict | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def handle_request(self, send_body: bool) -> None:
                url = urlsplit(self.path)
                hub.requests.append((self.command, url.path, self.headers.get("Range")))
                parts = [unquote(p) for p in url.path.split("/") if p]
                if parts[:2] == ["api", "datasets"] and len(parts) >= 6:
                    repo_id = "/".join(parts[2:4])
                    if repo_id not in hub.repos:
                        return self.reply_json(
                            404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
                        )
                    if parts[4] == "revision" and parts[5] in ("main", COMMIT):
                        return self.reply_json(200, {"id": repo_id, "sha": COMMIT})
                    if parts[4] == "tree" and parts[5] == COMMIT:
                        return self.tree(repo_id, "/".join(parts[6:]), url.query)
                    return self.reply_json(404, {"error": "Revision not found"})
                if parts[:1] == ["datasets"] and len(parts) >= 6 and parts[3] == "resolve":
                    repo_id = "/".join(parts[1:3])
                    data = hub.repos.get(repo_id, {}).get("/".join(parts[5:]))
                    if data is None or parts[4] != COMMIT:
                        return self.reply_json(404, {"error": "Entry not found"})
                    self.send_response(302)
                    self.send_header("Location", f"/cdn/{hashlib.sha256(data).hexdigest()}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if parts[:1] == ["cdn"] and len(parts) == 2 and parts[1] in hub.blobs:
                    return self.content(*hub.blobs[parts[1]], send_body)
                return self.reply_json(404, {"error": "not found"})

            def tree(self, repo_id: str, folder: str, query: str) -> None:
                entries = []
                for path, data in sorted(hub.repos[repo_id].items()):
                    parent = path.rsplit("/", 1)[0] if "/" in path else ""
                    if parent == folder:
                        sha = hashlib.sha256(data).hexdigest()
                        lfs = {"oid": sha, "size": len(data), "pointerSize": 134}
                        entries.append(
                            {
                                "type": "file",
                                "oid": sha[:40],
                                "size": len(data),
                                "path": path,
                                "lfs": lfs,
                            }
                        )
                cursor = int(parse_qs(query).get("cursor", ["0"])[0])
                page = entries[cursor : cursor + hub.page_size]
                headers = {}
                if cursor + hub.page_size < len(entries):
                    base = f"http://127.0.0.1:{hub.port}{urlsplit(self.path).path}"
                    headers["Link"] = f'<{base}?cursor={cursor + hub.page_size}>; rel="next"'
                self.reply_json(200, page, headers)

            def content(self, path: str, data: bytes, send_body: bool) -> None:
                start = 0
                if (header := self.headers.get("Range")) and header.startswith("bytes="):
                    start = int(header[len("bytes=") :].split("-")[0])
                body = data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.end_headers()
                if not send_body:
                    return
                stall = hub.stall.get(path)
                if stall is not None and start < stall and not hub.release.is_set():
                    self.wfile.write(body[: stall - start])
                    self.wfile.flush()
                    hub.release.wait(60)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def content_requests(self, path: str) -> list[str | None]:
        """The Range headers of every content request for one file."""
        blob = next(h for h, (p, _) in self.blobs.items() if p == path)
        return [r for m, p, r in self.requests if m == "GET" and p == f"/cdn/{blob}"]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def climbmix_files(train_shards: int = 4, docs: int = 300) -> dict[str, bytes]:
    """Small stand-ins for ClimbMix's shards: shard_00000.. and the pinned val shard_06542."""
    folder = Path(os.environ.get("TMPDIR", "/tmp"))
    files = {}
    names = [f"shard_{i:05d}.parquet" for i in range(train_shards)] + ["shard_06542.parquet"]
    for seed, name in enumerate(names):
        path = write_parquet(folder / f"ar-sources-{os.getpid()}-{name}", make_texts(docs, seed))
        files[name] = path.read_bytes()
        path.unlink()
    files["README.md"] = b"# not a shard\n"
    return files


@pytest.fixture(autouse=True)
def no_default_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub's own side requests (its agent-harness registry) go to its default
    endpoint, not to the one passed in: point that at a closed loopback port, never the internet."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", closed_port_url())


@pytest.fixture(scope="module")
def hub():
    server = LoopbackHub({"karpathy/climbmix-400b-shuffle": climbmix_files()})
    yield server
    server.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


SMALL = {
    "vocab_size": 512,
    "min_val_tokens": 1_000,
    "max_val_tokens": None,
    "split_secret": SECRET,
    "quiet": True,
    "chunk_chars": 20_000,
}


def reference_tokens(encoding, documents: list[prep.Document]) -> np.ndarray:
    """The non-streamed tokenization: prepare.encode_documents on the same documents."""
    return prep.encode_documents(encoding, documents, "reference", quiet=True)


def parquet_documents(path: Path, key: str) -> list[prep.Document]:
    return list(prep._parquet_documents(path, key))


# ---------------------------------------------------------------- hub sources


def test_climbmix_prepares_the_layout_from_pinned_shards(hub: LoopbackHub, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    manifest = sources.prepare_source(
        data_dir, "climbmix", shards=2, endpoint=hub.url, workers=2, **SMALL
    )
    assert prep.read_manifest(data_dir) == manifest  # every file there with its sha256
    for name in ("train/tokens.bin", "val/tokens.bin", "tokenizer/tokenizer.json"):
        assert name in manifest["files"]
    assert json.loads((data_dir / "tokenizer" / "tokenizer.json").read_text())["vocab_size"] == 512
    assert prep.read_split_secret(data_dir) == SECRET

    source = manifest["source"]
    assert source["revision"] == COMMIT and source["val_shard"] == "shard_06542.parquet"
    served = hub.repos["karpathy/climbmix-400b-shuffle"]
    assert [(s["path"], s["split"]) for s in source["shards"]] == [
        ("shard_06542.parquet", "val"),
        ("shard_00000.parquet", "train"),
        ("shard_00001.parquet", "train"),
    ]
    for shard in source["shards"]:
        assert shard["sha256"] == hashlib.sha256(served[shard["path"]]).hexdigest()
        assert shard["bytes"] == len(served[shard["path"]])
    downloads = tmp_path / "downloads" / "climbmix"
    assert sorted(p.name for p in downloads.glob("*.parquet")) == [
        "shard_00000.parquet",
        "shard_00001.parquet",
        "shard_06542.parquet",
    ]  # --shards 2 bounds what is fetched: shards 2 and 3 stay on the hub

    # val is exactly the pinned shard; train and holdout are the train shards' documents by
    # the secret's split (val-bucket documents go to train), each the same tokens as prepare.py
    encoding = prep.load_encoding(data_dir)
    val_docs = parquet_documents(downloads / "shard_06542.parquet", "climbmix/shard_06542.parquet")
    expected = {"val": val_docs}
    for shard in ("shard_00000.parquet", "shard_00001.parquet"):
        for doc in parquet_documents(downloads / shard, f"climbmix/{shard}"):
            split = streaming.document_split(doc.key, None, SECRET, pinned_val=True)
            expected.setdefault(split, []).append(doc)
    assert set(expected) - {"val"} <= set(streaming.split_names()) - {"val"}
    for split in streaming.split_names():
        stored = np.fromfile(data_dir / split / "tokens.bin", dtype="<u2")
        np.testing.assert_array_equal(stored, reference_tokens(encoding, expected.get(split, [])))
        assert manifest["documents"][split] == len(expected.get(split, []))
        assert manifest["bytes"][split] == sum(
            len(d.text.encode()) for d in expected.get(split, [])
        )
    token_bytes = np.fromfile(data_dir / "tokenizer" / "token_bytes.bin", dtype="<i4")
    val = np.fromfile(data_dir / "val" / "tokens.bin", dtype="<u2")
    assert int(token_bytes[val].sum()) == manifest["bytes"]["val"]  # bits per byte stay exact

    # the same request again: the manifest checks out, nothing is downloaded
    before = len(hub.requests)
    again = sources.prepare_source(data_dir, "climbmix", shards=2, endpoint=hub.url, **SMALL)
    assert again == manifest
    assert not [r for r in hub.requests[before:] if r[1].startswith("/cdn/")]


def test_an_interrupted_prepare_finishes_offline_from_the_cached_listing(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = sources.prepare_source(data_dir, "climbmix", shards=1, endpoint=hub.url, **SMALL)
    again = sources.prepare_source(
        data_dir, "climbmix", shards=1, endpoint=closed_port_url(), force=True, **SMALL
    )
    assert again["corpus"] == first["corpus"] and again["files"] == first["files"]


def test_offline_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PrepareError, match=r"cannot reach the Hugging Face hub: .*--corpus DIR"):
        sources.prepare_source(
            tmp_path / "data", "climbmix", shards=1, endpoint=closed_port_url(), **SMALL
        )
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("name", "shards", "message"),
    [
        ("climbmax", 1, r"unknown source 'climbmax'; use one of climbmix, fineweb-edu"),
        ("climbmix", 0, r"--shards 0 is out of range; climbmix has 4 train shards \(give 1..4\)"),
        ("climbmix", 5, r"--shards 5 is out of range"),
    ],
)
def test_bad_source_or_shards_is_a_clear_error(
    hub: LoopbackHub, tmp_path: Path, name: str, shards: int, message: str
) -> None:
    with pytest.raises(PrepareError, match=message):
        sources.prepare_source(tmp_path / "data", name, shards=shards, endpoint=hub.url, **SMALL)


def test_a_missing_repository_is_a_clear_error(tmp_path: Path) -> None:
    server = LoopbackHub({"someone/else": {"a.parquet": b"x"}})
    try:
        with pytest.raises(PrepareError, match=r"the hub has no dataset karpathy/climbmix"):
            sources.prepare_source(
                tmp_path / "data", "climbmix", shards=1, endpoint=server.url, **SMALL
            )
    finally:
        server.close()


# ---------------------------------------------------------------- downloads


KILLED_DOWNLOAD = """
import sys
from pathlib import Path
from huggingface_hub import constants
constants.DOWNLOAD_CHUNK_SIZE = 4096  # small writes, so the .part file grows while it streams
from trainer import sources
listing = sources.Listing.from_json(Path(sys.argv[1]).read_text())
remote = next(f for f in listing.files if f.path == sys.argv[2])
sources.download_shard(remote, listing, Path(sys.argv[3]), endpoint=sys.argv[4])
"""


def test_a_killed_download_resumes_and_a_complete_one_is_not_fetched_again(
    tmp_path: Path,
) -> None:
    data = write_parquet(tmp_path / "big.parquet", make_texts(600, seed=7)).read_bytes()
    server = LoopbackHub({"karpathy/climbmix-400b-shuffle": {"shard_00000.parquet": data}})
    half = len(data) // 2
    reachable = half // 2  # some of what was sent may still sit in the client's buffers
    server.stall["shard_00000.parquet"] = half
    try:
        source = sources.get_source("climbmix")
        cache = tmp_path / "listing.json"
        listing = sources.list_source(source, endpoint=server.url, cache=cache)
        remote = listing.files[0]
        assert remote.sha256 == hashlib.sha256(data).hexdigest()
        target = tmp_path / "downloads" / remote.path
        part = target.with_name(target.name + ".part")
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                KILLED_DOWNLOAD,
                str(cache),
                remote.path,
                str(target),
                server.url,
            ],
            cwd=REPO_ROOT,
            env={**os.environ, "HF_ENDPOINT": server.url},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while not (part.exists() and part.stat().st_size >= reachable):
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
            assert time.monotonic() < deadline, "the download never reached the stall point"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)  # killed mid-file
        child.wait(10)
        assert child.returncode == -signal.SIGKILL and not target.exists()
        kept = part.stat().st_size
        assert reachable <= kept <= half  # the stall: never more than was sent
        server.release.set()

        path = sources.download_shard(remote, listing, target, endpoint=server.url)
        assert path == target and not part.exists()
        assert hashlib.sha256(target.read_bytes()).hexdigest() == remote.sha256
        assert (
            server.content_requests(remote.path)[-1] == f"bytes={kept}-"
        )  # resumed, not refetched

        count = len(server.requests)
        sources.download_shard(remote, listing, target, endpoint=server.url)
        assert len(server.requests) == count  # complete and verified: no request at all

        target.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # damaged on disk
        sources.download_shard(remote, listing, target, endpoint=server.url)
        assert target.read_bytes() == data
        assert server.content_requests(remote.path)[-1] is None  # fetched whole
    finally:
        server.close()


# ---------------------------------------------------------------- local folders, streamed


def make_local_corpus(root: Path, seed: int = 0) -> Path:
    """.txt, .md in a subfolder, .jsonl and .parquet files: every reader prepare.py has."""
    rng = random.Random(seed)
    texts = make_texts(400, seed)
    (root / "notes").mkdir(parents=True)
    for i in range(0, 60, 3):
        (root / f"doc{i:03d}.txt").write_text("\n\n".join(texts[i : i + 3]) * 4, encoding="utf-8")
        (root / "notes" / f"doc{i:03d}.md").write_text("\n\n\n".join(texts[i + 1 : i + 3]))
    rows = [json.dumps({"text": t}) for t in texts[60:200]]
    rows.insert(rng.randint(0, len(rows)), "")  # a blank line is skipped, numbering goes on
    (root / "rows.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    write_parquet(root / "table.parquet", [*texts[200:], "   ", *texts[200:260]])
    return root


def test_a_local_folder_streams_to_the_same_split_and_tokens(tmp_path: Path) -> None:
    corpus = make_local_corpus(tmp_path / "corpus")
    data_dir = tmp_path / "data"
    options = {key: value for key, value in SMALL.items() if "val_tokens" not in key}
    manifest = streaming.prepare_local(data_dir, corpus, workers=2, **options)
    assert prep.read_manifest(data_dir) == manifest
    # the documents prepare.py reads, split by the same secret, in corpus order
    documents = [d for d in prep.corpus_documents(corpus) if d.text.strip()]
    encoding = prep.load_encoding(data_dir)
    for split in streaming.split_names():
        chosen = [d for d in documents if prep.split_of(d.key, SECRET) == split]
        stored = np.fromfile(data_dir / split / "tokens.bin", dtype="<u2")
        np.testing.assert_array_equal(stored, reference_tokens(encoding, chosen))
        assert manifest["documents"][split] == len(chosen)
    assert manifest["corpus"] == prep._corpus_fingerprint(corpus)
    # and prepare.py's own split of the folder agrees document for document
    in_memory = prep.prepare(
        tmp_path / "in-memory", corpus=corpus, vocab_size=512, split_secret=SECRET, quiet=True
    )
    assert in_memory["documents"] == manifest["documents"]


def peak_python_memory(tmp_path: Path, documents: int) -> tuple[int, int]:
    """(peak traced bytes of the parent while preparing, characters of text) for a parquet corpus."""
    corpus = tmp_path / f"corpus{documents}"
    texts = make_texts(documents, seed=3, words_per_doc=(200, 600))
    for i in range(4):
        write_parquet(corpus / f"part{i}.parquet", texts[i::4], row_group_size=32)
    chars = sum(len(t) for t in texts)
    del texts
    tracemalloc.start()
    try:
        manifest = streaming.prepare_local(
            tmp_path / f"data{documents}",
            corpus,
            vocab_size=512,
            split_secret=SECRET,
            quiet=True,
            workers=2,
            chunk_chars=100_000,
            tokenizer_sample_bytes=400_000,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(manifest["documents"].values()) == documents
    assert manifest["streamed"]["tokenizer_sample_bytes"] < 500_000
    return peak, chars


def test_memory_stays_bounded_on_a_corpus_many_chunks_large(tmp_path: Path) -> None:
    small_peak, _ = peak_python_memory(tmp_path, 600)
    large_peak, large_chars = peak_python_memory(tmp_path, 1800)
    assert large_chars > 40 * 100_000  # > 40 chunks
    # three times the corpus, the same memory: chunks in flight, never the corpus (text or tokens)
    assert large_peak < 1.25 * small_peak + 256_000, (small_peak, large_peak)
    # below the corpus text alone (one byte a character here), let alone its tokens
    assert large_peak < large_chars / 1.5, (large_peak, large_chars)


def test_val_cap_takes_the_shortest_prefix_and_the_minimum_is_enforced(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    train = write_parquet(corpus / "train.parquet", make_texts(400, seed=1))
    val = write_parquet(corpus / "val.parquet", make_texts(200, seed=2))
    inputs = [
        streaming.InputFile(val, "val.parquet", split="val"),
        streaming.InputFile(train, "train.parquet"),
    ]
    options = {
        "vocab_size": 512,
        "split_secret": SECRET,
        "quiet": True,
        "workers": 1,
        "chunk_chars": 5_000,
    }
    manifest = streaming.build_prepared(
        tmp_path / "data", inputs, fingerprint="test:cap", max_val_tokens=3_000, **options
    )
    encoding = prep.load_encoding(tmp_path / "data")
    val_docs = parquet_documents(val, "val.parquet")
    lengths = np.cumsum([len(encoding.encode_ordinary(d.text)) + 1 for d in val_docs])
    keep = int(np.searchsorted(lengths, 3_000)) + 1
    stored = np.fromfile(tmp_path / "data" / "val" / "tokens.bin", dtype="<u2")
    np.testing.assert_array_equal(stored, reference_tokens(encoding, val_docs[:keep]))
    assert manifest["tokens"]["val"] >= 3_000 > lengths[keep - 2]
    # a pinned val file: nothing of the train file goes to val
    assert manifest["documents"]["val"] == keep

    with pytest.raises(
        PrepareError, match=r"val split holds [\d,]+ tokens, fewer than the 10,000,000"
    ):
        streaming.build_prepared(
            tmp_path / "data2", inputs, fingerprint="test:min", min_val_tokens=10_000_000, **options
        )
    assert not (tmp_path / "data2").exists()
    assert not list(tmp_path.glob("data2.partial-*"))


def test_bad_local_files_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jsonl").write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(PrepareError, match=r"a.jsonl:2 has no string 'text' field"):
        streaming.prepare_local(tmp_path / "data", tmp_path / "bad", quiet=True, workers=1)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "a.txt").write_bytes(b"\xff\xfe not utf-8" * 100)
    with pytest.raises(PrepareError, match=r"a.txt is not UTF-8 text"):
        streaming.prepare_local(tmp_path / "data", tmp_path / "bin", quiet=True, workers=1)
    write_parquet(tmp_path / "col" / "a.parquet", ["x"])
    with pytest.raises(PrepareError, match=r"has no 'body' column \(columns: id, text\)"):
        streaming.prepare_local(
            tmp_path / "data", tmp_path / "col", text_column="body", quiet=True, workers=1
        )
    with pytest.raises(PrepareError, match=r"corpus is too small"):
        streaming.prepare_local(tmp_path / "data", tmp_path / "col", quiet=True, workers=1)
    assert not (tmp_path / "data").exists()


def test_streamed_text_chunks_match_prepare_chunk_text(tmp_path: Path) -> None:
    paragraphs = make_texts(300, seed=5, words_per_doc=(5, 400))
    text = ""
    rng = random.Random(5)
    for p in paragraphs:
        text += p + rng.choice(["\n\n", "\n\n\n", "\n", "\n\n\n\n", " "])
    path = tmp_path / "long.txt"
    path.write_text(text, encoding="utf-8")
    old = streaming.TEXT_READ_CHARS
    streaming.TEXT_READ_CHARS = 1_001  # blocks end inside paragraphs and separators
    try:
        batches = list(streaming.file_batches(streaming.InputFile(path, "long.txt")))
    finally:
        streaming.TEXT_READ_CHARS = old
    streamed = [(k, t) for keys, texts, _ in batches for k, t in zip(keys, texts, strict=True)]
    expected = [(d.key, d.text) for d in prep._chunk_text("long.txt", text) if d.text.strip()]
    assert len(batches) > 3 and streamed == expected


def test_cli_script_entry_lists_the_sources() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "trainer.sources"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "karpathy/climbmix-400b-shuffle" in out and "HuggingFaceFW/fineweb-edu" in out
