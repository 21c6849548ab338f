"""Streamed, parallel, memory-bounded tokenization into the layout trainer/prepare.py writes.

FIXED PART OF THE RESEARCH TARGET: agents can read this file but never edit it.

prepare.py holds its whole corpus in memory; that is fine for the bundled ~9 MB but not for
hub datasets of gigabytes. This module builds the same data folder (train/tokens.bin,
val/tokens.bin, one folder per further split, tokenizer/, manifest.json written last,
split.key) from input files of any size:

- Input files (.parquet, .jsonl, .txt/.md) are read a batch at a time (parquet record
  batches, lines, paragraphs) into chunks of about `chunk_chars` characters.
- A chunk's documents get their split from prepare.split_of (the installation's secret),
  unless the file is pinned to a split (a hub source's val shard: every document is val).
  With a pinned val file, documents of the other files that hash into the val range go to
  train (nothing is thrown away; val is exactly the pinned file).
- The tokenizer is prepare.train_tokenizer on a bounded sample: the first
  `tokenizer_sample_bytes` of text outside val (train and holdout, as prepare.py), each
  document cut at `TOKENIZER_DOC_CHARS`.
- Chunks are encoded by a pool of worker processes, at most `2 x workers` chunks in flight,
  and appended in input order to each split's tokens.bin as they come back: memory is
  bounded by the chunk size, never by the corpus.
- A pinned val file contributes its leading documents up to `max_val_tokens` (the shortest
  prefix with at least that many tokens) and must reach `min_val_tokens`.

Token streams are identical to prepare.encode_documents on the same documents in the same
order (each document led by <|endoftext|>): documents are stored in input order (file order,
then row order), not in prepare.py's secret order. That order is public for a hub source,
whose val split is a public shard anyway; the split secret still decides every other split.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import secrets
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer import prepare as prep
from trainer.prepare import PrepareError

DEFAULT_CHUNK_CHARS = 2_000_000  # characters of text per task sent to a worker
DEFAULT_TOKENIZER_SAMPLE_BYTES = (
    500_000_000  # train text the BPE is trained on (autoresearch: ~1e9 chars)
)
TOKENIZER_DOC_CHARS = 10_000  # each sampled document is cut here (as autoresearch does)
PARQUET_BATCH_ROWS = 256  # rows per parquet record batch read (~1M characters of web text)
TEXT_READ_CHARS = 1 << 20  # characters per read from a .txt/.md file


@dataclass(frozen=True)
class InputFile:
    """One file of the corpus and how its documents are named and split.

    Document keys (what prepare.split_of hashes) are `{key}:{row}` for parquet (row from 0)
    and jsonl (line from 1), `{key}#{index}` for text chunks: the keys prepare.py uses, so a
    local folder gets the same split whichever pipeline prepares it.
    """

    path: Path
    key: str
    split: str | None = None  # None: the secret's split per document; else every document's split
    text_column: str = "text"


@dataclass
class Chunk:
    """A batch of documents on its way to a worker: keys, texts, and where they came from."""

    input_index: int
    keys: list[str]
    texts: list[str]
    split: str | None
    disk_bytes: float  # the share of its file's size this chunk stands for (progress only)


@dataclass
class SplitWriter:
    """Appends one split's tokens to its tokens.bin and counts documents, tokens and bytes."""

    path: Path
    documents: int = 0
    tokens: int = 0
    text_bytes: int = 0
    handle: Any = field(default=None, repr=False)

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = self.path.open("wb")

    def append(self, tokens: np.ndarray, doc_tokens: np.ndarray, doc_bytes: np.ndarray) -> None:
        tokens.astype("<u2", copy=False).tofile(self.handle)
        self.documents += int(doc_tokens.size)
        self.tokens += int(tokens.size)
        self.text_bytes += int(doc_bytes.sum())

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


# ---------------------------------------------------------------- reading files in chunks


def _parquet_batches(item: InputFile) -> Iterator[tuple[list[str], list[str], float]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise PrepareError(
            f"reading {item.path} needs pyarrow: `pip install pyarrow`, or convert it to .jsonl"
        ) from exc
    try:
        parquet = pq.ParquetFile(item.path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
        raise PrepareError(
            f"{item.path} is not a readable parquet file ({exc}); delete it so it is fetched again, "
            "or leave it out"
        ) from exc
    names = parquet.schema_arrow.names
    if item.text_column not in names:
        raise PrepareError(
            f"{item.path} has no '{item.text_column}' column (columns: {', '.join(names)}); "
            "give a file with a text column"
        )
    rows = max(1, parquet.metadata.num_rows)
    size = item.path.stat().st_size
    row = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[item.text_column]):
        keys: list[str] = []
        texts: list[str] = []
        for text in batch.column(0).to_pylist():
            if isinstance(text, str) and text.strip():
                keys.append(f"{item.key}:{row}")
                texts.append(text)
            row += 1
        yield keys, texts, size * batch.num_rows / rows


def _jsonl_batches(item: InputFile) -> Iterator[tuple[list[str], list[str], float]]:
    keys: list[str] = []
    texts: list[str] = []
    chars = 0
    read_bytes = 0
    with _open_text(item.path) as lines:
        for number, line in enumerate(lines, start=1):
            read_bytes += len(line)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PrepareError(
                    f"{item.path}:{number} is not valid JSON ({exc.msg}); each line must be an "
                    "object with a 'text' field"
                ) from exc
            text = row.get(item.text_column) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise PrepareError(
                    f"{item.path}:{number} has no string '{item.text_column}' field; each line "
                    f'must look like {{"{item.text_column}": "..."}}'
                )
            if text.strip():
                keys.append(f"{item.key}:{number}")
                texts.append(text)
                chars += len(text)
            if chars >= TEXT_READ_CHARS:
                yield keys, texts, read_bytes
                keys, texts, chars, read_bytes = [], [], 0, 0
    yield keys, texts, read_bytes


def _text_batches(item: InputFile) -> Iterator[tuple[list[str], list[str], float]]:
    """prepare._chunk_text, streamed: paragraphs split at blank lines, ~CHUNK_BYTES per document."""
    documents: list[str] = []
    chunk: list[str] = []
    size = index = 0
    read_bytes = 0

    def paragraphs() -> Iterator[str]:
        nonlocal read_bytes
        pending = ""
        with _open_text(item.path) as handle:
            while block := handle.read(TEXT_READ_CHARS):
                read_bytes += len(block)
                parts = (pending + block).split("\n\n")
                pending = parts.pop()
                yield from parts
        yield pending

    def batch(first_index: int) -> tuple[list[str], list[str], float]:
        # prepare.py drops whitespace-only documents before splitting; so does the pipeline
        numbered = [(first_index + i, text) for i, text in enumerate(documents)]
        kept = [(f"{item.key}#{i}", text) for i, text in numbered if text.strip()]
        return [k for k, _ in kept], [t for _, t in kept], read_bytes

    first = 0
    for paragraph in paragraphs():
        chunk.append(paragraph)
        size += len(paragraph) + 2
        if size >= prep.CHUNK_BYTES:
            documents.append("\n\n".join(chunk))
            chunk, size, index = [], 0, index + 1
            if len(documents) * prep.CHUNK_BYTES >= TEXT_READ_CHARS:
                yield batch(first)
                first, documents, read_bytes = index, [], 0
    if chunk and "".join(chunk).strip():
        documents.append("\n\n".join(chunk))
    yield batch(first)


class _open_text:
    """A UTF-8 text file whose decoding errors become a PrepareError that names the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self):
        try:
            self.handle = self.path.open(encoding="utf-8")
        except OSError as exc:
            raise PrepareError(
                f"cannot read {self.path}: {exc.strerror}; check the path and its permissions"
            ) from exc
        return self

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self.handle
        except UnicodeDecodeError as exc:
            raise self._not_utf8(exc) from exc

    def read(self, size: int) -> str:
        try:
            return self.handle.read(size)
        except UnicodeDecodeError as exc:
            raise self._not_utf8(exc) from exc

    def _not_utf8(self, exc: UnicodeDecodeError) -> PrepareError:
        return PrepareError(
            f"{self.path} is not UTF-8 text ({exc.reason}); convert it or leave it out"
        )

    def __exit__(self, *exc_info: object) -> None:
        self.handle.close()


def file_batches(item: InputFile) -> Iterator[tuple[list[str], list[str], float]]:
    """(keys, texts, disk bytes) batches of one input file, empty documents left out."""
    suffix = item.path.suffix
    if suffix == ".parquet":
        return _parquet_batches(item)
    if suffix == ".jsonl":
        return _jsonl_batches(item)
    if suffix in (".txt", ".md"):
        return _text_batches(item)
    raise PrepareError(
        f"{item.path}: unsupported file type; use one of {', '.join(prep.CORPUS_SUFFIXES)}"
    )


def iter_chunks(
    inputs: Sequence[InputFile],
    chunk_chars: int,
    skip_input: Callable[[int], bool] = lambda _: False,
) -> Iterator[Chunk]:
    """Chunks of about `chunk_chars` characters, in input order; `skip_input(i)` stops file i early.

    A chunk never spans two files and holds at least one document.
    """
    for index, item in enumerate(inputs):
        keys: list[str] = []
        texts: list[str] = []
        chars = 0
        disk = 0.0
        for batch_keys, batch_texts, batch_disk in file_batches(item):
            if skip_input(index):
                break
            disk_per_char = batch_disk / max(1, sum(len(t) for t in batch_texts))
            for key, text in zip(batch_keys, batch_texts, strict=True):
                keys.append(key)
                texts.append(text)
                chars += len(text)
                disk += len(text) * disk_per_char
                if chars >= chunk_chars:
                    yield Chunk(index, keys, texts, item.split, disk)
                    keys, texts, chars, disk = [], [], 0, 0.0
        if texts and not skip_input(index):
            yield Chunk(index, keys, texts, item.split, disk)


def local_inputs(corpus: Path, text_column: str = "text") -> list[InputFile]:
    """A file or folder of .txt/.md/.jsonl/.parquet files as inputs, keyed like prepare.py's."""
    if not corpus.exists():
        raise PrepareError(
            f"--corpus {corpus} does not exist; give a file or a folder of "
            f"{', '.join(prep.CORPUS_SUFFIXES)} files"
        )
    files = (
        [corpus]
        if corpus.is_file()
        else sorted(
            p for p in corpus.rglob("*") if p.is_file() and p.suffix in prep.CORPUS_SUFFIXES
        )
    )
    if not files:
        raise PrepareError(f"--corpus {corpus} holds no {', '.join(prep.CORPUS_SUFFIXES)} files")
    return [
        InputFile(
            path=file,
            key=str(file.relative_to(corpus) if corpus.is_dir() else file.name),
            text_column=text_column,
        )
        for file in files
    ]


# ---------------------------------------------------------------- split and encoding (workers)

_worker: dict[str, Any] = {}


def _init_worker(ranks: list[tuple[bytes, int]], pattern: str, secret: bytes, pinned_val: bool):
    _worker["encoding"] = prep.build_encoding(dict(ranks), pattern)
    _worker["secret"] = secret
    _worker["pinned_val"] = pinned_val


def document_split(key: str, fixed: str | None, secret: bytes, pinned_val: bool) -> str:
    """A document's split: its file's pinned split, else the secret's (val -> train when val is pinned)."""
    if fixed is not None:
        return fixed
    split = prep.split_of(key, secret)
    return "train" if split == "val" and pinned_val else split


def _encode_chunk(
    keys: list[str], texts: list[str], fixed: str | None
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """split -> (uint16 tokens, tokens per document, UTF-8 bytes per document) for one chunk."""
    encoding = _worker["encoding"]
    eot = encoding.eot_token
    grouped: dict[str, list[int]] = {}
    for position, key in enumerate(keys):
        split = document_split(key, fixed, _worker["secret"], _worker["pinned_val"])
        grouped.setdefault(split, []).append(position)
    out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for split, positions in grouped.items():
        batch = [texts[p] for p in positions]
        encoded = [encoding.encode_ordinary(text) for text in batch]
        lengths = np.fromiter((len(ids) + 1 for ids in encoded), dtype=np.int64, count=len(batch))
        tokens = np.empty(int(lengths.sum()), dtype=np.uint16)
        cursor = 0
        for ids in encoded:
            tokens[cursor] = eot
            tokens[cursor + 1 : cursor + 1 + len(ids)] = ids
            cursor += 1 + len(ids)
        text_bytes = np.fromiter((len(t.encode("utf-8")) for t in batch), dtype=np.int64)
        out[split] = (tokens, lengths, text_bytes)
    return out


# ---------------------------------------------------------------- progress


class _Progress:
    """A tqdm bar on a terminal (bytes of input read), a final summary line either way."""

    def __init__(self, total: float, label: str, quiet: bool) -> None:
        self.quiet = quiet
        self.label = label
        self.started = time.perf_counter()
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=int(total), unit="B", unit_scale=True, desc=f"  {label}", mininterval=0.5
            )

    def advance(self, amount: float) -> None:
        if self.bar is not None:
            self.bar.update(int(amount))

    def close(self, summary: str) -> None:
        if self.bar is not None:
            self.bar.close()
        if not self.quiet:
            elapsed = time.perf_counter() - self.started
            print(f"  {self.label:<18} done in {elapsed:.1f} s: {summary}", file=sys.stderr)


# ---------------------------------------------------------------- the pipeline


def resolve_secret(data_dir: Path, split_secret: bytes | None) -> bytes:
    """The split secret, in prepare.prepare's order: argument, environment, split.key, new."""
    if split_secret is not None and len(split_secret) < prep.MIN_SPLIT_SECRET_BYTES:
        raise PrepareError(
            f"the split secret holds {len(split_secret)} bytes; give at least "
            f"{prep.MIN_SPLIT_SECRET_BYTES}"
        )
    if split_secret is None and os.environ.get(prep.SPLIT_SECRET_ENV):
        split_secret = prep.parse_split_secret(
            os.environ[prep.SPLIT_SECRET_ENV], prep.SPLIT_SECRET_ENV
        )
    return (
        split_secret
        or prep.read_split_secret(data_dir)
        or secrets.token_bytes(prep.SPLIT_SECRET_BYTES)
    )


def ready_manifest(data_dir: Path, fingerprint: str, vocab_size: int, secret: bytes) -> dict | None:
    """The folder's manifest when it already holds exactly this corpus, vocabulary and split."""
    existing = prep.read_manifest(data_dir)
    if (
        existing
        and existing.get("vocab_size") == vocab_size
        and existing.get("corpus") == fingerprint
        and existing.get("split_key_id") == prep.split_key_id(secret)
        and prep.read_split_secret(data_dir) == secret
        and (prep.has_holdout(existing) or not prep.holdout_wanted())
    ):
        return existing
    return None


def split_names() -> list[str]:
    """train, then every held-out split of prepare.SPLIT_PERMILLE (val, and any added later)."""
    return ["train", *(name for name, _ in prep.SPLIT_PERMILLE)]


def tokenizer_sample(
    inputs: Sequence[InputFile], secret: bytes, sample_bytes: int
) -> Iterator[prep.Document]:
    """The first `sample_bytes` of text outside val (cut at TOKENIZER_DOC_CHARS), streamed.

    Train and holdout documents alike, as prepare.tokenizer_documents does: the tokenizer,
    which training reads, says nothing about which documents are held out.
    """
    pinned_val = any(item.split == "val" for item in inputs)
    taken = 0
    for item in inputs:
        if item.split == "val":
            continue
        for keys, texts, _ in file_batches(item):
            for key, text in zip(keys, texts, strict=True):
                if document_split(key, item.split, secret, pinned_val) == "val":
                    continue
                piece = text[:TOKENIZER_DOC_CHARS]
                yield prep.Document(key, piece)
                taken += len(piece.encode("utf-8"))
                if taken >= sample_bytes:
                    return


def _write_tokenizer(folder: Path, ranks: dict[bytes, int], pattern: str, vocab_size: int) -> None:
    """tokenizer/ exactly as prepare.prepare writes it (tiktoken ranks, json, token byte lengths)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.tiktoken").write_text(
        "".join(
            f"{base64.b64encode(tok).decode()} {rank}\n"
            for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])
        )
    )
    (folder / "tokenizer.json").write_text(
        json.dumps(
            {
                "pattern": pattern,
                "special_tokens": {prep.EOT: len(ranks)},
                "vocab_size": vocab_size,
            },
            indent=1,
        )
    )
    prep.token_byte_lengths(ranks, vocab_size).tofile(folder / "token_bytes.bin")


def _staging_dir(data_dir: Path) -> Path:
    """A fresh build folder beside the target; stale ones of dead runs are removed (as prepare.py does)."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in data_dir.parent.glob(f"{data_dir.name}.partial-*"):
        owner = stale.name.rsplit("-", 1)[-1]
        if not (owner.isdigit() and int(owner) != os.getpid() and prep._pid_alive(int(owner))):
            shutil.rmtree(stale, ignore_errors=True)
    return data_dir.parent / f"{data_dir.name}.partial-{os.getpid()}"


def _ordered_results(
    chunks: Iterator[Chunk], workers: int, init_args: tuple
) -> Iterator[tuple[Chunk, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]]:
    """Encoded chunks in input order; at most 2 x workers chunks in flight (bounded memory)."""
    if workers <= 1:
        _init_worker(*init_args)
        for chunk in chunks:
            yield chunk, _encode_chunk(chunk.keys, chunk.texts, chunk.split)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    with context.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
        pending: deque = deque()
        for chunk in chunks:
            task = pool.apply_async(_encode_chunk, (chunk.keys, chunk.texts, chunk.split))
            chunk.texts = []  # the task holds the list until it is sent; the parent keeps no copy
            pending.append((chunk, task))
            while len(pending) >= 2 * workers:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()


def _tokenizer_from_sample(
    inputs: Sequence[InputFile], secret: bytes, sample_bytes: int, vocab_size: int
) -> tuple[dict[bytes, int], str, int]:
    """prepare.train_tokenizer on the bounded sample, streamed: (ranks, pattern, sample bytes).

    A bad input file raises its own PrepareError, a too small corpus says so, before any
    refusal of the tokenizer's.
    """
    sampled = {"documents": 0, "bytes": 0}
    reader_errors: list[PrepareError] = []

    def counted_sample() -> Iterator[prep.Document]:
        try:
            for document in tokenizer_sample(inputs, secret, sample_bytes):
                sampled["documents"] += 1
                sampled["bytes"] += len(document.text.encode("utf-8"))
                yield document
        except PrepareError as exc:
            reader_errors.append(exc)
            raise

    tokenizer_error: PrepareError | None = None
    ranks: dict[bytes, int] = {}
    pattern = ""
    try:  # streamed into rustbpe (it reads in batches): the sample is never held whole
        ranks, pattern = prep.train_tokenizer(counted_sample(), vocab_size)  # type: ignore[arg-type]
    except PrepareError as exc:
        tokenizer_error = exc
    except Exception:
        if not reader_errors:
            raise
    if reader_errors:  # whatever rustbpe made of the reader's exception
        raise reader_errors[0]
    if sampled["bytes"] < prep.MIN_CORPUS_BYTES or sampled["documents"] < prep.MIN_DOCUMENTS:
        raise PrepareError(
            f"the corpus is too small ({sampled['bytes']:,} bytes outside val in "
            f"{sampled['documents']} documents); give at least {prep.MIN_CORPUS_BYTES:,} bytes "
            f"in {prep.MIN_DOCUMENTS}+ documents"
        )
    if tokenizer_error is not None:
        raise tokenizer_error
    return ranks, pattern, sampled["bytes"]


def _encode_into(
    writers: dict[str, SplitWriter],
    inputs: Sequence[InputFile],
    init_args: tuple,
    bar: _Progress,
    *,
    workers: int,
    chunk_chars: int,
    max_val_tokens: int | None,
) -> None:
    """Every input's documents, encoded by the workers, appended in order to their split's writer.

    A pinned val file stops at the shortest prefix of its documents with >= max_val_tokens
    tokens: chunks encoded past that point are dropped, so the result does not depend on the
    chunking or the number of workers.
    """
    val_full: set[int] = set()  # pinned val files that reached max_val_tokens
    chunks = iter_chunks(inputs, chunk_chars, skip_input=lambda i: i in val_full)
    for chunk, encoded in _ordered_results(chunks, workers, init_args):
        bar.advance(chunk.disk_bytes)
        if chunk.input_index in val_full:
            continue
        for split, (tokens, doc_tokens, doc_bytes) in encoded.items():
            writer = writers[split]
            if chunk.split == "val" and max_val_tokens is not None:
                ends = np.cumsum(doc_tokens)
                room = max_val_tokens - writer.tokens
                if ends[-1] >= room:
                    val_full.add(chunk.input_index)
                    keep = int(np.searchsorted(ends, room, side="left")) + 1
                    tokens = tokens[: int(ends[keep - 1])]
                    doc_tokens, doc_bytes = doc_tokens[:keep], doc_bytes[:keep]
            writer.append(tokens, doc_tokens, doc_bytes)


def build_prepared(
    data_dir: Path,
    inputs: Sequence[InputFile],
    *,
    fingerprint: str,
    vocab_size: int,
    split_secret: bytes | None = None,
    force: bool = False,
    quiet: bool = False,
    workers: int | None = None,
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
    tokenizer_sample_bytes: int = DEFAULT_TOKENIZER_SAMPLE_BYTES,
    min_val_tokens: int = 0,
    max_val_tokens: int | None = None,
    extra_manifest: dict[str, Any] | None = None,
) -> dict:
    """Build (or verify) a prepared data folder from `inputs`, streamed; returns its manifest.

    `fingerprint` names the corpus (the manifest's "corpus"): a second run with the same
    fingerprint, vocabulary and secret is a verified no-op. `min_val_tokens` and
    `max_val_tokens` bound the val split (the cap applies to a pinned val file only).
    """
    data_dir = data_dir.expanduser().resolve()
    if not 257 <= vocab_size <= 65_535:
        raise PrepareError(
            f"--vocab {vocab_size} is out of range; use 257..65535 (tokens are stored as uint16)"
        )
    if chunk_chars < 1 or tokenizer_sample_bytes < 1:
        raise PrepareError("chunk_chars and tokenizer_sample_bytes must be positive")
    secret = resolve_secret(data_dir, split_secret)
    if not force and (existing := ready_manifest(data_dir, fingerprint, vocab_size, secret)):
        if not quiet:
            print(f"data ready in {data_dir} (manifest verified)", file=sys.stderr)
        return existing
    unknown = {item.split for item in inputs} - {None, *split_names()}
    if unknown:
        raise PrepareError(
            f"input pinned to unknown split(s) {sorted(map(str, unknown))}; "
            f"use one of {split_names()}"
        )
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    log = (lambda *_: None) if quiet else (lambda msg: print(msg, file=sys.stderr))
    started = time.perf_counter()
    log(f"preparing data in {data_dir} (vocab {vocab_size}, corpus {fingerprint}), streamed")

    t = time.perf_counter()
    ranks, pattern, sample_bytes = _tokenizer_from_sample(
        inputs, secret, tokenizer_sample_bytes, vocab_size
    )
    log(
        f"  tokenizer          done in {time.perf_counter() - t:.1f} s "
        f"(sample: {sample_bytes:,} bytes of text outside val)"
    )

    staging = _staging_dir(data_dir)
    pinned_val = any(item.split == "val" for item in inputs)
    writers = {name: SplitWriter(staging / name / "tokens.bin") for name in split_names()}
    try:
        (staging / "tokenizer").mkdir(parents=True)
        key_fd = os.open(staging / prep.SPLIT_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(key_fd, "w") as key_file:
            key_file.write(secret.hex() + "\n")
        _write_tokenizer(staging / "tokenizer", ranks, pattern, vocab_size)
        for writer in writers.values():
            writer.open()
        bar = _Progress(sum(item.path.stat().st_size for item in inputs), "encoding", quiet)
        _encode_into(
            writers,
            inputs,
            (list(ranks.items()), pattern, secret, pinned_val),
            bar,
            workers=workers,
            chunk_chars=chunk_chars,
            max_val_tokens=max_val_tokens,
        )
        for writer in writers.values():
            writer.close()
        for name, writer in list(writers.items()):
            if name not in ("train", "val") and writer.documents == 0:
                shutil.rmtree(writer.path.parent)  # as prepare.py: no folder for an empty holdout
                del writers[name]
        counts = {name: w.tokens for name, w in writers.items()}
        bar.close(", ".join(f"{n:,} {name} tokens" for name, n in counts.items()))
        if writers["val"].documents == 0:
            raise PrepareError(
                "no document landed in the val split; give a larger corpus (about 2% of "
                "documents are held out)"
            )
        if writers["val"].tokens < min_val_tokens:
            raise PrepareError(
                f"the val split holds {writers['val'].tokens:,} tokens, fewer than the "
                f"{min_val_tokens:,} required (for a stable val_bpb); pin a larger val file or lower "
                "min_val_tokens"
            )
        files = {
            str(p.relative_to(staging)): {"bytes": p.stat().st_size, "sha256": prep.sha256_file(p)}
            for p in sorted(staging.rglob("*"))
            if p.is_file() and p.name != prep.SPLIT_KEY_FILE
        }
        manifest: dict[str, Any] = {
            "manifest_version": prep.MANIFEST_VERSION,
            "corpus": fingerprint,
            "corpus_bytes": sum(w.text_bytes for w in writers.values()),
            "documents": {name: w.documents for name, w in writers.items()},
            "split_key_id": prep.split_key_id(secret),
            "tokens": counts,
            "bytes": {name: w.text_bytes for name, w in writers.items()},
            "vocab_size": vocab_size,
            "files": files,
            "prepare_seconds": 0.0,
            "streamed": {
                "tokenizer_sample_bytes": sample_bytes,
                "val_pinned": pinned_val,
                "max_val_tokens": max_val_tokens,
                "workers": workers,
            },
            **(extra_manifest or {}),
        }
        manifest["prepare_seconds"] = round(time.perf_counter() - started, 2)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if data_dir.exists():
            retired = data_dir.parent / f"{data_dir.name}.partial-old-{os.getpid()}"
            data_dir.rename(retired)
            shutil.rmtree(retired, ignore_errors=True)
        staging.rename(data_dir)
    except BaseException:
        for writer in writers.values():
            writer.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(
        f"  wrote {manifest['tokens']['train']:,} train / {manifest['tokens']['val']:,} val tokens "
        f"in {manifest['prepare_seconds']:.1f} s"
    )
    return manifest


def prepare_local(
    data_dir: Path,
    corpus: Path,
    *,
    vocab_size: int = prep.DEFAULT_VOCAB_SIZE,
    text_column: str = "text",
    **options: Any,
) -> dict:
    """A local file or folder of any size, streamed; the same split as prepare.prepare(corpus=...).

    `options` go to build_prepared (force, quiet, workers, split_secret, chunk_chars, ...).
    """
    inputs = local_inputs(corpus, text_column)
    return build_prepared(
        data_dir,
        inputs,
        fingerprint=prep._corpus_fingerprint(corpus),
        vocab_size=vocab_size,
        **options,
    )
