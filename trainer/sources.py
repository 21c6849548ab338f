"""Named datasets on the Hugging Face hub: list, download (resumable, sha256-checked), prepare.

FIXED PART OF THE RESEARCH TARGET: agents can read this file but never edit it.

`prepare_source(data_dir, "climbmix", shards=10)` lists the source's parquet shards at one
commit of its repository, downloads the pinned val shard and the first N train shards into
`$AUTORESEARCH_HOME/downloads/<source>/` (beside data/, never mounted in a jail), and streams
them through trainer/streaming.py into the layout prepare.py writes. Every shard is checked
against the sha256 the hub lists for it (its LFS object id) and recorded in the manifest.

Downloads resume: a shard is fetched into `<name>.part` and appended to with an HTTP Range
request after an interruption (a killed process, a dropped connection); it is renamed into
place only once its size and sha256 match. A complete shard is not fetched again: its sha256
is checked once and remembered (verified.json, by size and modification time). The listing of
the last successful run is cached, so a prepare that was interrupted after the downloads can
be finished offline.

The hub is reached through huggingface_hub (HfApi for the listing, http_get for the bytes),
so HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE and proxies work as they do for any hub client.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import logging
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from trainer import prepare as prep
from trainer import streaming
from trainer.prepare import PrepareError

DEFAULT_SOURCE_VOCAB_SIZE = 8192  # autoresearch's vocabulary for these corpora
MIN_VAL_TOKENS = 10_000_000  # the pinned val shard must give at least this many tokens
MAX_VAL_TOKENS = 64_000_000  # ... and contributes its first documents up to this many
DOWNLOAD_WORKERS = 4


@dataclass(frozen=True)
class HubSource:
    """A parquet shard dataset on the hub: where its shards are and which one is val."""

    name: str
    repo_id: str
    repo_type: str
    folder: str  # the folder of the shards in the repository ("" = its root)
    pattern: str  # shard file names (fnmatch), e.g. "shard_*.parquet"
    text_column: str
    val_file: str | None  # the pinned val shard (path in the repository); None: the last shard
    default_shards: int  # train shards when --shards is not given
    shard_size: str  # what one shard weighs (see docs/data.md: measured or estimated)
    description: str


SOURCES: dict[str, HubSource] = {
    source.name: source
    for source in (
        HubSource(
            name="climbmix",
            repo_id="karpathy/climbmix-400b-shuffle",
            repo_type="dataset",
            folder="",
            pattern="shard_*.parquet",
            text_column="text",
            val_file="shard_06542.parquet",  # autoresearch's pinned val shard (the last one)
            default_shards=10,  # autoresearch's default
            shard_size="~100 MB download, ~60M tokens (estimate)",
            description="NVIDIA ClimbMix 400B, shuffled into 6,543 parquet shards "
            "(the data karpathy/autoresearch trains on)",
        ),
        HubSource(
            name="fineweb-edu",
            repo_id="HuggingFaceFW/fineweb-edu",
            repo_type="dataset",
            folder="sample/10BT",
            pattern="*.parquet",
            text_column="text",
            val_file="sample/10BT/013_00000.parquet",  # the last of the 14 sample files
            default_shards=1,
            shard_size="~2 GB download, ~0.7B tokens (estimate)",
            description="FineWeb-Edu, its 10B-token sample (14 parquet files)",
        ),
    )
}


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repository at a commit: its path, size and sha256 (None if the hub gives none)."""

    path: str
    size: int
    sha256: str | None


@dataclass(frozen=True)
class Listing:
    """The shards of a source at one commit."""

    repo_id: str
    repo_type: str
    commit: str
    files: tuple[RemoteFile, ...]

    def to_json(self) -> str:
        return json.dumps(
            {**asdict(self), "files": [asdict(f) for f in self.files]}, indent=1, sort_keys=True
        )

    @classmethod
    def from_json(cls, text: str) -> Listing:
        data = json.loads(text)
        return cls(
            repo_id=data["repo_id"],
            repo_type=data["repo_type"],
            commit=data["commit"],
            files=tuple(RemoteFile(**f) for f in data["files"]),
        )


def get_source(name: str) -> HubSource:
    """The named source, or a PrepareError listing the names there are."""
    try:
        return SOURCES[name]
    except KeyError:
        raise PrepareError(
            f"unknown source {name!r}; use one of {', '.join(sorted(SOURCES))}, "
            "or --corpus DIR for local files"
        ) from None


def default_download_dir(data_dir: Path, source: HubSource) -> Path:
    """`<data_dir's parent>/downloads/<source>`: beside data/, outside every folder a jail mounts."""
    return data_dir.expanduser().resolve().parent / "downloads" / source.name


# ---------------------------------------------------------------- hub errors


def _unreachable(exc: BaseException, what: str) -> PrepareError:
    return PrepareError(
        f"cannot reach the Hugging Face hub: {exc.__class__.__name__}: {exc} ({what}); "
        "check the network, HF_ENDPOINT and HF_HUB_OFFLINE, or use --corpus DIR for local files"
    )


def _hub_error(exc: BaseException, repo_id: str, repo_type: str, what: str) -> PrepareError:
    """A PrepareError that says what went wrong with the hub and what to do instead."""
    from huggingface_hub import errors

    if isinstance(exc, errors.GatedRepoError):
        return PrepareError(
            f"{repo_id} is gated: accept its terms on the hub and set HF_TOKEN ({what})"
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return PrepareError(
            f"the hub has no {repo_type} {repo_id} (or it is private: set HF_TOKEN) ({what})"
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return PrepareError(
            f"{repo_id} has no such revision ({what}); give a branch, tag or commit it has"
        )
    if isinstance(exc, errors.HfHubHTTPError):
        return PrepareError(f"the Hugging Face hub refused {what}: {exc}; try again later")
    return _unreachable(exc, what)


def _network_errors() -> tuple[type[BaseException], ...]:
    import httpx2
    from huggingface_hub import errors

    return (errors.HfHubHTTPError, httpx2.TransportError, OSError)


# ---------------------------------------------------------------- listing


def list_source(
    source: HubSource,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    revision: str = "main",
    cache: Path | None = None,
) -> Listing:
    """The source's shards at the commit `revision` points to now (sorted by path).

    One request for the commit (`/api/{type}s/{repo}/revision/{rev}`), then the tree of the
    shard folder at that commit (`/api/{type}s/{repo}/tree/{commit}/{folder}`, paged). When
    the hub cannot be reached and `cache` holds the listing of an earlier run, that one is
    used (a warning says so).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=endpoint, token=token)
    try:
        info = api.repo_info(source.repo_id, repo_type=source.repo_type, revision=revision)
        commit = info.sha
        if not commit:
            raise PrepareError(f"the hub gave no commit for {source.repo_id}@{revision}")
        entries = api.list_repo_tree(
            source.repo_id,
            path_in_repo=source.folder or None,
            repo_type=source.repo_type,
            revision=commit,
            recursive=False,
        )
        files = tuple(
            sorted(
                (
                    RemoteFile(
                        path=entry.path,
                        size=int(entry.size),
                        sha256=entry.lfs.sha256 if entry.lfs is not None else None,
                    )
                    for entry in entries
                    if isinstance(entry, RepoFile)
                    and fnmatch.fnmatch(entry.path.rsplit("/", 1)[-1], source.pattern)
                ),
                key=lambda f: f.path,
            )
        )
    except _network_errors() as exc:
        error = _hub_error(exc, source.repo_id, source.repo_type, f"listing {source.repo_id}")
        if cache is not None and cache.is_file() and "cannot reach" in str(error):
            listing = Listing.from_json(cache.read_text())
            print(
                f"prepare: {error}\nprepare: using the listing cached in {cache}", file=sys.stderr
            )
            return listing
        raise error from exc
    if not files:
        raise PrepareError(
            f"{source.repo_id}@{commit[:12]} has no files matching "
            f"{source.folder + '/' if source.folder else ''}{source.pattern}"
        )
    listing = Listing(source.repo_id, source.repo_type, commit, files)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache.with_name(cache.name + ".tmp")
        temporary.write_text(listing.to_json())
        temporary.replace(cache)
    return listing


def select_shards(
    listing: Listing, source: HubSource, shards: int
) -> tuple[list[RemoteFile], RemoteFile]:
    """(the first `shards` train shards in path order, the pinned val shard)."""
    by_path = {f.path: f for f in listing.files}
    val_path = source.val_file or listing.files[-1].path
    if val_path not in by_path:
        raise PrepareError(
            f"{source.repo_id}@{listing.commit[:12]} has no val shard {val_path}; "
            "the source table in trainer/sources.py needs updating"
        )
    train = [f for f in listing.files if f.path != val_path]
    if shards < 1 or shards > len(train):
        raise PrepareError(
            f"--shards {shards} is out of range; {source.name} has {len(train)} train shards "
            f"(give 1..{len(train)})"
        )
    return train[:shards], by_path[val_path]


# ---------------------------------------------------------------- downloads


def sha256_of(path: Path) -> str:
    return prep.sha256_file(path)


class _Verified:
    """Which complete shards were hashed already: path -> (sha256, size, mtime_ns), in a JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        try:
            self.entries: dict[str, Any] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            self.entries = {}

    def matches(self, name: str, file: Path, sha256: str | None) -> bool:
        entry = self.entries.get(name)
        stat = file.stat()
        return bool(
            entry
            and entry["sha256"] == sha256
            and entry["size"] == stat.st_size
            and entry["mtime_ns"] == stat.st_mtime_ns
        )

    def record(self, name: str, file: Path, sha256: str) -> None:
        stat = file.stat()
        with self.lock:
            self.entries[name] = {
                "sha256": sha256,
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
            }
            temporary = self.path.with_name(self.path.name + f".{threading.get_ident()}.tmp")
            temporary.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
            temporary.replace(self.path)


class _ForwardingBar:
    """What http_get takes as its progress bar: forwards every update to one bar for all shards."""

    def __init__(self, shared: Any, lock: threading.Lock, **_: Any) -> None:
        self.shared = shared
        self.lock = lock

    def __enter__(self) -> _ForwardingBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def update(self, n: float = 1) -> None:
        if self.shared is not None:
            with self.lock:
                self.shared.update(n)


def resolve_url(listing: Listing, path: str, endpoint: str | None = None) -> str:
    """`{endpoint}/{datasets/}{repo}/resolve/{commit}/{path}`: what hf_hub_url gives, except
    that an explicit endpoint is used whatever HF_ENDPOINT said when huggingface_hub was imported."""
    from huggingface_hub import constants

    base = (endpoint or constants.ENDPOINT).rstrip("/")
    prefix = constants.REPO_TYPES_URL_PREFIXES.get(listing.repo_type, "")
    return (
        f"{base}/{prefix}{listing.repo_id}/resolve/{quote(listing.commit, safe='')}/{quote(path)}"
    )


def download_shard(
    remote: RemoteFile,
    listing: Listing,
    target: Path,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    verified: _Verified | None = None,
    progress: Any = None,
    progress_lock: threading.Lock | None = None,
) -> Path:
    """One shard into `target` (resuming `<target>.part`), checked against its size and sha256."""
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    verified = verified or _Verified(target.parent / "verified.json")
    if target.is_file():
        if verified.matches(remote.path, target, remote.sha256):
            return target
        digest = sha256_of(target)
        if target.stat().st_size == remote.size and remote.sha256 in (None, digest):
            verified.record(remote.path, target, digest)
            return target
        target.unlink()  # a different or damaged file: fetched anew below
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    url = resolve_url(listing, remote.path, endpoint)
    bar = functools.partial(_ForwardingBar, progress, progress_lock or threading.Lock())
    for attempt in (1, 2):
        resume = part.stat().st_size if part.exists() else 0
        if resume > remote.size:
            part.unlink()
            resume = 0
        try:
            with part.open("ab") as handle:
                http_get(
                    url,
                    handle,
                    resume_size=resume,
                    headers=build_hf_headers(token=token),
                    expected_size=remote.size,
                    displayed_filename=remote.path,
                    tqdm_class=bar,  # type: ignore[arg-type]
                )
        except _network_errors() as exc:
            error = _hub_error(
                exc, listing.repo_id, listing.repo_type, f"downloading {remote.path}"
            )
            raise PrepareError(
                f"{error}; the {part.stat().st_size if part.exists() else 0:,} bytes fetched "
                f"so far are kept in {part} and the next run resumes from there"
            ) from exc
        digest = sha256_of(part)
        if part.stat().st_size == remote.size and remote.sha256 in (None, digest):
            part.replace(target)
            verified.record(remote.path, target, digest)
            return target
        part.unlink()  # a resumed file that does not check out: fetch it whole, once
        if attempt == 2:
            raise PrepareError(
                f"{remote.path} from {listing.repo_id}@{listing.commit[:12]} does not match its "
                f"sha256 {remote.sha256} after a full download; try again later"
            )
    raise AssertionError("unreachable")


def download_shards(
    files: Sequence[RemoteFile],
    listing: Listing,
    folder: Path,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    workers: int = DOWNLOAD_WORKERS,
    quiet: bool = False,
) -> list[Path]:
    """Every file into `folder` (same relative paths), `workers` at a time; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    verified = _Verified(folder / "verified.json")
    targets = [folder / f.path for f in files]
    have = 0
    for remote, target in zip(files, targets, strict=True):
        part = target.with_name(target.name + ".part")
        have += remote.size if target.is_file() else (part.stat().st_size if part.is_file() else 0)
    needed = sum(f.size for f in files) - have
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise PrepareError(
            f"the download needs {needed / 1e9:.1f} GB more in {folder}, only {free / 1e9:.1f} GB "
            "are free; free some space or give fewer --shards"
        )
    bar = None
    if not quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=sum(f.size for f in files), initial=have, unit="B", unit_scale=True)
        bar.set_description("  downloading")
    started = time.perf_counter()
    lock = threading.Lock()

    def fetch(pair: tuple[RemoteFile, Path]) -> Path:
        return download_shard(
            pair[0],
            listing,
            pair[1],
            endpoint=endpoint,
            token=token,
            verified=verified,
            progress=bar,
            progress_lock=lock,
        )

    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            paths = list(pool.map(fetch, zip(files, targets, strict=True)))
    finally:
        if bar is not None:
            bar.close()
    if not quiet:
        print(
            f"  downloading        done in {time.perf_counter() - started:.1f} s: {len(files)} "
            f"shards, {sum(f.size for f in files) / 1e6:,.1f} MB ({needed / 1e6:,.1f} MB fetched)",
            file=sys.stderr,
        )
    return paths


# ---------------------------------------------------------------- the whole preparation


def prepare_source(
    data_dir: Path | None,
    name: str,
    *,
    shards: int | None = None,
    vocab_size: int = DEFAULT_SOURCE_VOCAB_SIZE,
    endpoint: str | None = None,
    token: str | None = None,
    revision: str = "main",
    download_dir: Path | None = None,
    download_workers: int = DOWNLOAD_WORKERS,
    min_val_tokens: int = MIN_VAL_TOKENS,
    max_val_tokens: int | None = MAX_VAL_TOKENS,
    force: bool = False,
    quiet: bool = False,
    split_secret: bytes | None = None,
    **options: Any,
) -> dict:
    """Download a named hub source's shards and prepare `data_dir` from them; returns the manifest.

    `options` go to streaming.build_prepared (workers, chunk_chars, tokenizer_sample_bytes).
    A folder that already holds this source at this commit, these shards, vocabulary and
    split is verified and kept (nothing is downloaded).
    """
    source = get_source(name)
    data_dir = (data_dir or prep.default_data_dir()).expanduser().resolve()
    httpx_log = logging.getLogger("httpx2")  # one INFO line per request otherwise
    httpx_log.setLevel(max(httpx_log.getEffectiveLevel(), logging.WARNING))
    shards = source.default_shards if shards is None else shards
    folder = download_dir or default_download_dir(data_dir, source)
    listing = list_source(
        source,
        endpoint=endpoint,
        token=token,
        revision=revision,
        cache=folder / "listing.json",
    )
    train_files, val_file = select_shards(listing, source, shards)
    selected = [val_file, *train_files]
    content = hashlib.sha256(
        "".join(f"{f.path}:{f.sha256}:{f.size}\n" for f in selected).encode()
    ).hexdigest()[:16]
    fingerprint = (
        f"hf:{source.repo_type}/{source.repo_id}@{listing.commit}:{shards} train shards,"
        f"val {val_file.path} up to {max_val_tokens} tokens#sha256:{content}"
    )
    secret = streaming.resolve_secret(data_dir, split_secret)
    if not force and (ready := streaming.ready_manifest(data_dir, fingerprint, vocab_size, secret)):
        if not quiet:
            print(f"data ready in {data_dir} (manifest verified)", file=sys.stderr)
        return ready
    if not quiet:
        print(
            f"{source.name}: {source.repo_id}@{listing.commit[:12]}, val {val_file.path} + "
            f"{shards} train shards into {folder}",
            file=sys.stderr,
        )
    paths = download_shards(
        selected,
        listing,
        folder,
        endpoint=endpoint,
        token=token,
        workers=download_workers,
        quiet=quiet,
    )
    inputs = [
        streaming.InputFile(
            path=path,
            key=f"{source.name}/{remote.path}",
            split="val" if remote.path == val_file.path else None,
            text_column=source.text_column,
        )
        for remote, path in zip(selected, paths, strict=True)
    ]
    extra = {
        "source": {
            "name": source.name,
            "repo_id": source.repo_id,
            "repo_type": source.repo_type,
            "revision": listing.commit,
            "text_column": source.text_column,
            "val_shard": val_file.path,
            "shards": [
                {
                    "path": remote.path,
                    "bytes": remote.size,
                    "sha256": remote.sha256 or sha256_of(path),
                    "split": "val" if remote.path == val_file.path else "train",
                }
                for remote, path in zip(selected, paths, strict=True)
            ],
        }
    }
    return streaming.build_prepared(
        data_dir,
        inputs,
        fingerprint=fingerprint,
        vocab_size=vocab_size,
        split_secret=secret,
        force=True,  # the check above already found the folder out of date
        quiet=quiet,
        min_val_tokens=min_val_tokens,
        max_val_tokens=max_val_tokens,
        extra_manifest=extra,
        **options,
    )


def describe_sources() -> str:
    """The source table as text (for --help and errors)."""
    return "\n".join(
        f"  {s.name:<12} {s.repo_id} ({s.folder + '/' if s.folder else ''}{s.pattern}), val {s.val_file}, "
        f"default {s.default_shards} shards of {s.shard_size}"
        for s in SOURCES.values()
    )


if __name__ == "__main__":  # python -m trainer.sources: the table
    print(describe_sources())
