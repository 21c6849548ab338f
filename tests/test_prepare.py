"""trainer/prepare.py: deterministic, cached, a clean document split, exact byte counts, clear errors."""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest

from trainer import prepare as prepare_module
from trainer.evaluate import bits_per_byte
from trainer.prepare import (
    EOT,
    SPLIT_KEY_FILE,
    SPLIT_SECRET_ENV,
    PrepareError,
    default_documents,
    load_encoding,
    prepare,
    read_manifest,
    read_split_secret,
    split_documents,
)

SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ne",
    "ru",
    "ta",
    "shi",
    "vor",
    "el",
    "an",
    "qu",
    "bri",
    "sto",
    "fen",
]
SYLLABLES += ["dal", "ori", "mu", "pex", "zan", "tho", "é", "ß", "ø"]


def make_corpus(root: Path, total_bytes: int = 300_000, seed: int = 0) -> Path:
    """A varied synthetic corpus in a folder: .txt files, .md files in a subfolder, one .jsonl file.

    Sentences are built from ~3000 pseudo-words so that BPE finds a few thousand merges.
    """
    rng = random.Random(seed)
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(3000)]

    def sentence() -> str:
        text = " ".join(rng.choice(words) for _ in range(rng.randint(5, 14))).capitalize()
        return text + rng.choice([".", ".", "!", "?", f" in {rng.randint(1000, 2099)}."])

    root.mkdir(parents=True, exist_ok=True)
    (root / "notes").mkdir(exist_ok=True)
    rows: list[str] = []
    written = index = 0
    while written < total_bytes:
        paragraphs = (
            " ".join(sentence() for _ in range(rng.randint(2, 6))) for _ in range(rng.randint(3, 8))
        )
        text = "\n\n".join(paragraphs)
        if index % 3 == 0:
            (root / f"doc{index:03d}.txt").write_text(text, encoding="utf-8")
        elif index % 3 == 1:
            (root / "notes" / f"doc{index:03d}.md").write_text(text, encoding="utf-8")
        else:
            rows.append(json.dumps({"text": text}))
        written += len(text.encode())
        index += 1
    (root / "rows.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~300 KB of varied text as a folder of .txt / .md / .jsonl files (built once per module)."""
    return make_corpus(tmp_path_factory.mktemp("corpus") / "corpus")


def mtimes(folder: Path) -> dict[str, int]:
    """Modification time (ns) of every file under a folder, by relative path."""
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()
    }


def siblings(folder: Path) -> list[str]:
    """Names beside a folder in its parent (to catch leftover staging folders)."""
    return sorted(p.name for p in folder.parent.iterdir())


# ---------------------------------------------------------------- determinism and caching


def test_prepare_twice_gives_identical_files(data_dir: Path, tmp_path: Path) -> None:
    """Two preparations of the default corpus with the same split secret produce byte-identical files."""
    first = json.loads((data_dir / "manifest.json").read_text())
    secret = read_split_secret(data_dir)
    assert secret is not None
    second = prepare(tmp_path / "data", quiet=True, split_secret=secret)
    assert read_split_secret(tmp_path / "data") == secret
    assert second["files"] == first["files"]
    assert set(first["files"]) == {
        "tokenizer/tokenizer.tiktoken",
        "tokenizer/tokenizer.json",
        "tokenizer/token_bytes.bin",
        "train/tokens.bin",
        "val/tokens.bin",
        "holdout/tokens.bin",
    }
    for key in ("corpus", "documents", "split_key_id", "tokens", "bytes", "vocab_size"):
        assert second[key] == first[key], key


def test_a_new_installation_draws_a_new_split(data_dir: Path, tmp_path: Path) -> None:
    """Without a fixed secret, another folder gets its own split.key (0600, outside the mounted
    subfolders) and another val set; the tokenizer is trained on the train split, so it differs too."""
    first = json.loads((data_dir / "manifest.json").read_text())
    second = prepare(tmp_path / "data", quiet=True)
    key = tmp_path / "data" / SPLIT_KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600
    assert read_split_secret(tmp_path / "data") != read_split_secret(data_dir)
    assert second["split_key_id"] != first["split_key_id"]
    assert second["files"]["val/tokens.bin"] != first["files"]["val/tokens.bin"]
    assert SPLIT_KEY_FILE not in json.dumps(second)  # not a listed file, never its content
    assert read_split_secret(data_dir).hex() not in json.dumps(first)  # type: ignore[union-attr]


def test_fixed_secret_from_the_command_line_or_the_environment(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--split-secret HEX and $AUTORESEARCH_SPLIT_SECRET fix the split; a changed secret rebuilds
    the folder, the same one is a no-op."""
    secret = bytes(range(32))
    argv = ["--corpus", str(corpus), "--vocab", "512", "--data-dir", str(tmp_path / "a")]
    assert prepare_module.main([*argv, "--split-secret", secret.hex()]) == 0
    assert read_split_secret(tmp_path / "a") == secret
    monkeypatch.setenv(SPLIT_SECRET_ENV, secret.hex())
    from_env = prepare(tmp_path / "b", corpus=corpus, vocab_size=512, quiet=True)
    assert from_env["files"] == read_manifest(tmp_path / "a")["files"]  # type: ignore[index]
    before = mtimes(tmp_path / "b")
    prepare(tmp_path / "b", corpus=corpus, vocab_size=512, quiet=True)
    assert mtimes(tmp_path / "b") == before
    monkeypatch.setenv(SPLIT_SECRET_ENV, bytes(range(1, 33)).hex())
    changed = prepare(tmp_path / "b", corpus=corpus, vocab_size=512, quiet=True)
    assert changed["split_key_id"] != from_env["split_key_id"]
    assert read_split_secret(tmp_path / "b") == bytes(range(1, 33))


@pytest.mark.parametrize(
    ("text", "phrase"), [("not-hex", "is not hex"), ("00" * 8, "holds 8 bytes; give at least 16")]
)
def test_bad_split_secret_is_a_clear_error(
    text: str, phrase: str, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret that is not hex, or too short, is refused before any work, saying what to give."""
    monkeypatch.setenv(SPLIT_SECRET_ENV, text)
    with pytest.raises(PrepareError, match=phrase):
        prepare(tmp_path / "data", corpus=corpus, vocab_size=512, quiet=True)
    assert not (tmp_path / "data").exists()


def test_second_run_is_a_fast_no_op(data_dir: Path) -> None:
    """Preparing an already prepared folder rewrites nothing and takes well under a second."""
    before = mtimes(data_dir)
    beside = siblings(data_dir)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    started = time.perf_counter()
    again = prepare(data_dir, quiet=True)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"the cached path took {elapsed:.2f} s"
    assert again == manifest
    assert mtimes(data_dir) == before
    assert siblings(data_dir) == beside


def test_force_and_changed_vocab_rebuild(corpus: Path, tmp_path: Path) -> None:
    """The no-op check can fail: --force, or another vocabulary, rewrites the files."""
    target = tmp_path / "data"
    prepare(target, corpus=corpus, vocab_size=512, quiet=True)
    old = 1_000_000_000
    for path in target.rglob("*"):
        os.utime(path, ns=(old, old))
    prepare(target, corpus=corpus, vocab_size=512, quiet=True)
    assert set(mtimes(target).values()) == {old}
    prepare(target, corpus=corpus, vocab_size=512, force=True, quiet=True)
    assert old not in set(mtimes(target).values())
    manifest = prepare(target, corpus=corpus, vocab_size=768, quiet=True)
    assert manifest["vocab_size"] == 768
    assert json.loads((target / "tokenizer" / "tokenizer.json").read_text())["vocab_size"] == 768
    assert siblings(target) == ["data"]


# ---------------------------------------------------------------- the split


def test_train_and_val_documents_are_disjoint(data_dir: Path) -> None:
    """The document-level split never overlaps, covers everything, holds out ~2%, matches the
    files; the manifest counts the val documents but does not name them."""
    documents = default_documents()
    secret = read_split_secret(data_dir)
    assert secret is not None
    train, val, holdout = split_documents(documents, secret)
    train_keys, val_keys = {d.key for d in train}, {d.key for d in val}
    assert not train_keys & val_keys
    assert train_keys | val_keys | {d.key for d in holdout} == {d.key for d in documents}
    assert len(train) + len(val) + len(holdout) == len(documents)
    assert 0.01 <= len(val) / len(documents) <= 0.04
    manifest_text = (data_dir / "manifest.json").read_text()
    manifest = json.loads(manifest_text)
    assert not [key for key in val_keys if key in manifest_text]
    assert manifest["documents"] == {"train": len(train), "val": len(val), "holdout": len(holdout)}
    assert manifest["bytes"]["val"] == sum(len(d.text.encode()) for d in val)
    encoding = load_encoding(data_dir)
    val_tokens = np.fromfile(data_dir / "val" / "tokens.bin", dtype="<u2")
    assert encoding.decode(val_tokens.tolist()).split(EOT)[1:] == [d.text for d in val]


def test_split_does_not_depend_on_order() -> None:
    """The split is a keyed hash of each key: shuffling the documents changes nothing."""
    documents = default_documents()
    shuffled = list(documents)
    random.Random(7).shuffle(shuffled)
    secret = bytes(range(32))
    assert split_documents(shuffled, secret) == split_documents(documents, secret)


# ---------------------------------------------------------------- bits per byte and token bytes


def test_bits_per_byte_matches_hand_computation() -> None:
    """val_bpb = nats / (ln 2 * bytes), checked on hand-computed cases."""
    # 100 tokens at 2 bits each over 100 bytes: 2 bits per byte.
    assert bits_per_byte(100 * 2 * math.log(2), 100) == pytest.approx(2.0, rel=1e-12)
    # A uniform guess over 4096 tokens is 12 bits a token; 10 tokens over 40 bytes: 3 bits per byte.
    assert bits_per_byte(10 * math.log(4096), 40) == pytest.approx(3.0, rel=1e-12)
    # 1 nat over 1 byte is 1/ln 2 bits.
    assert bits_per_byte(1.0, 1) == pytest.approx(1.4426950408889634, rel=1e-12)


def test_token_bytes_are_exact(data_dir: Path) -> None:
    """token_bytes.bin: 0 for <|endoftext|>, the raw byte length for every other token."""
    vocab_size = json.loads((data_dir / "tokenizer" / "tokenizer.json").read_text())["vocab_size"]
    token_bytes = np.fromfile(data_dir / "tokenizer" / "token_bytes.bin", dtype="<i4")
    encoding = load_encoding(data_dir)
    assert token_bytes.shape == (vocab_size,)
    assert encoding.n_vocab == vocab_size
    assert encoding.eot_token == vocab_size - 1
    assert encoding.encode(EOT, allowed_special="all") == [vocab_size - 1]
    assert token_bytes[vocab_size - 1] == 0
    lengths = [len(encoding.decode_single_token_bytes(rank)) for rank in range(vocab_size - 1)]
    assert token_bytes[: vocab_size - 1].tolist() == lengths
    assert min(lengths) >= 1


def test_token_bytes_sum_to_text_bytes(data_dir: Path) -> None:
    """The bytes of the tokens of a text add up to the text's UTF-8 length, val split included."""
    token_bytes = np.fromfile(data_dir / "tokenizer" / "token_bytes.bin", dtype="<i4")
    encoding = load_encoding(data_dir)
    texts = [
        "To be, or not to be, that is the question:\n",
        "In the beginning God created the heaven and the earth.",
        "Café naïve — 東京 🙂 \t\r\n  1234567 'tis ~~~",
        "",
    ]
    for text in texts:
        ids = encoding.encode_ordinary(text)
        assert int(token_bytes[ids].sum()) == len(text.encode("utf-8")), text
        assert encoding.decode(ids) == text
    manifest = json.loads((data_dir / "manifest.json").read_text())
    val_tokens = np.fromfile(data_dir / "val" / "tokens.bin", dtype="<u2")
    assert val_tokens.size == manifest["tokens"]["val"]
    assert int(token_bytes[val_tokens].sum()) == manifest["bytes"]["val"]


# ---------------------------------------------------------------- bad input


def write_tiny(root: Path) -> Path:
    """A corpus far below the minimum size."""
    root.mkdir()
    (root / "a.txt").write_text("Hello there. " * 50)
    return root


def write_non_utf8(root: Path) -> Path:
    """A valid corpus plus one Latin-1 file."""
    make_corpus(root, 250_000, seed=1)
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    return root


def write_jsonl_without_text(root: Path) -> Path:
    """A JSONL file whose second line has no 'text' field."""
    root.mkdir()
    (root / "rows.jsonl").write_text('{"text": "fine"}\n{"title": "no text here"}\n')
    return root


def write_empty(root: Path) -> Path:
    """A folder with no corpus files (only an ignored .csv)."""
    root.mkdir()
    (root / "table.csv").write_text("a,b\n1,2\n")
    return root


BAD_CORPORA = {
    "missing": (lambda root: root, ["does not exist"]),
    "empty folder": (write_empty, ["holds no", ".txt"]),
    "tiny": (write_tiny, ["too small", "at least 200,000 bytes"]),
    "non-utf8": (write_non_utf8, ["latin1.txt is not UTF-8", "convert it or leave it out"]),
    "jsonl without text": (write_jsonl_without_text, ["rows.jsonl:2", "no string 'text' field"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CORPORA))
def test_bad_corpus_is_a_clear_error(case: str, tmp_path: Path) -> None:
    """Each bad corpus raises PrepareError naming the problem, and leaves nothing behind."""
    build, phrases = BAD_CORPORA[case]
    corpus = build(tmp_path / "corpus")
    target = tmp_path / "out" / "data"
    with pytest.raises(PrepareError) as raised:
        prepare(target, corpus=corpus, vocab_size=512, quiet=True)
    message = str(raised.value)
    for phrase in phrases:
        assert phrase in message, message
    assert "\n" not in message
    assert not target.exists()
    assert not (target.parent.exists() and list(target.parent.iterdir()))


@pytest.mark.parametrize("vocab", [0, 256, 65_536, 100_000])
def test_vocab_out_of_range(vocab: int, corpus: Path, tmp_path: Path) -> None:
    """The vocabulary must fit uint16 token ids and exceed the 256 byte tokens."""
    with pytest.raises(PrepareError, match=rf"--vocab {vocab} is out of range; use 257\.\.65535"):
        prepare(tmp_path / "data", corpus=corpus, vocab_size=vocab, quiet=True)
    assert not (tmp_path / "data").exists()


def test_vocab_larger_than_the_corpus_supports(tmp_path: Path) -> None:
    """~250 KB with --vocab 60000: rustbpe stops early; prepare says so and suggests a size that works."""
    corpus = make_corpus(tmp_path / "corpus", 250_000, seed=2)
    target = tmp_path / "data"
    started = time.perf_counter()
    with pytest.raises(PrepareError) as raised:
        prepare(target, corpus=corpus, vocab_size=60_000, quiet=True)
    assert time.perf_counter() - started < 10
    message = str(raised.value)
    assert "the corpus supports only" in message
    assert "not --vocab 60000" in message
    assert not target.exists()
    suggested = int(message.split("use --vocab ")[1].split()[0])
    supported = int(message.split("supports only ")[1].split()[0])
    assert 257 <= suggested <= supported
    manifest = prepare(target, corpus=corpus, vocab_size=suggested, quiet=True)
    assert manifest["vocab_size"] == suggested


# ---------------------------------------------------------------- interrupted runs and the CLI


def test_interrupted_run_is_redone(corpus: Path, tmp_path: Path) -> None:
    """Leftover staging folders are removed and a data folder without a manifest is rebuilt."""
    target = tmp_path / "data"
    junk = tmp_path / "data.partial-123"
    (junk / "train").mkdir(parents=True)
    (junk / "train" / "tokens.bin").write_bytes(b"\x00" * 100)
    (target / "train").mkdir(parents=True)
    (target / "train" / "tokens.bin").write_bytes(b"half-written")
    manifest = prepare(target, corpus=corpus, vocab_size=512, quiet=True)
    assert siblings(target) == ["data"]
    assert read_manifest(target) == manifest
    assert (target / "train" / "tokens.bin").stat().st_size == 2 * manifest["tokens"]["train"]


def test_corrupted_file_is_detected_and_rebuilt(corpus: Path, tmp_path: Path) -> None:
    """A file that no longer matches its manifest sha256 makes the folder untrusted and rebuilt."""
    target = tmp_path / "data"
    manifest = prepare(target, corpus=corpus, vocab_size=512, quiet=True)
    val = target / "val" / "tokens.bin"
    original = val.read_bytes()
    val.write_bytes(bytes([original[0] ^ 1]) + original[1:])
    assert read_manifest(target) is None
    assert prepare(target, corpus=corpus, vocab_size=512, quiet=True)["files"] == manifest["files"]
    assert val.read_bytes() == original


def test_main_reports_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`prepare` on bad input exits 2 with one `prepare: ...` line on stderr and no traceback."""
    argv_cases = [
        ["--corpus", str(tmp_path / "nowhere"), "--data-dir", str(tmp_path / "data")],
        ["--vocab", "70000", "--data-dir", str(tmp_path / "data")],
        ["--corpus", str(write_tiny(tmp_path / "tiny")), "--data-dir", str(tmp_path / "data")],
    ]
    for argv in argv_cases:
        assert prepare_module.main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        lines = captured.err.strip().splitlines()
        errors = [line for line in lines if line.startswith("prepare: ")]
        assert len(errors) == 1, captured.err
        assert lines[-1] == errors[0]
        assert "Traceback" not in captured.err
    assert not (tmp_path / "data").exists()


def test_main_succeeds_on_a_custom_corpus(corpus: Path, tmp_path: Path) -> None:
    """The CLI entry point returns 0 and leaves a verified data folder."""
    target = tmp_path / "data"
    assert (
        prepare_module.main(["--corpus", str(corpus), "--vocab", "512", "--data-dir", str(target)])
        == 0
    )
    assert read_manifest(target) is not None


def test_custom_corpus_folder(corpus: Path, tmp_path: Path) -> None:
    """A folder of .txt, .md and .jsonl: all three are read, split, tokenized and round-trip exactly."""
    target = tmp_path / "data"
    manifest = prepare(target, corpus=corpus, vocab_size=512, quiet=True)
    documents = prepare_module.corpus_documents(corpus)
    secret = read_split_secret(target)
    assert secret is not None
    train, val, holdout = split_documents(documents, secret)
    keys = [d.key for d in documents]
    assert any(k.startswith("doc") and ".txt#" in k for k in keys)
    assert any(k.startswith("notes/") and ".md#" in k for k in keys)
    assert any(k.startswith("rows.jsonl:") for k in keys)
    assert manifest["vocab_size"] == 512
    assert manifest["corpus"].startswith(f"path:{corpus.resolve()}#sha256:")
    assert manifest["documents"] == {"train": len(train), "val": len(val), "holdout": len(holdout)}
    assert 280_000 <= manifest["corpus_bytes"] <= 320_000
    encoding = load_encoding(target)
    assert encoding.n_vocab == 512
    for split, docs in (("train", train), ("val", val), ("holdout", holdout)):
        tokens = np.fromfile(target / split / "tokens.bin", dtype="<u2")
        assert tokens.max() < 512
        assert tokens[0] == encoding.eot_token
        pieces = encoding.decode(tokens.tolist()).split(EOT)
        assert pieces[0] == ""
        assert pieces[1:] == [d.text for d in docs]


def test_jsonl_files_with_the_same_name_in_two_folders(tmp_path: Path) -> None:
    """`2023/rows.jsonl` and `2024/rows.jsonl` are different files and must both be accepted."""
    corpus = tmp_path / "corpus"
    for year, seed in (("2023", 3), ("2024", 4)):
        source = make_corpus(tmp_path / f"src{year}", 150_000, seed=seed)
        rows = [json.dumps({"text": p.read_text()}) for p in sorted(source.rglob("*.txt"))]
        rows += (source / "rows.jsonl").read_text().splitlines()
        (corpus / year).mkdir(parents=True)
        (corpus / year / "rows.jsonl").write_text("\n".join(rows) + "\n")
    manifest = prepare(tmp_path / "data", corpus=corpus, vocab_size=512, quiet=True)
    assert sum(manifest["documents"].values()) > 40


def test_plain_prepare_keeps_a_folder_prepared_from_another_corpus(
    corpus: Path, tmp_path: Path
) -> None:
    """`make run` calls a plain prepare: it must not replace a corpus the operator prepared on
    purpose (--corpus, --source) with the bundled one; --force does."""
    target = tmp_path / "data"
    custom = prepare(target, corpus=corpus, vocab_size=512, quiet=True)
    kept = prepare(target, quiet=True)
    assert kept == custom and read_manifest(target)["corpus"] == custom["corpus"]
    with pytest.raises(prepare_module.PrepareError, match="--shards N goes with --source"):
        prepare(target, shards=3, quiet=True)
    with pytest.raises(prepare_module.PrepareError, match="not both"):
        prepare(target, corpus=corpus, source="climbmix", quiet=True)
