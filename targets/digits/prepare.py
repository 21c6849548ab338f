"""Prepare the digits data once, offline: 1,797 8x8 images -> a secret train/val/holdout split.

FIXED PART OF THE RESEARCH TARGET: agents can read this file but never edit it. The server runs
it, trusted and outside any jail: `autoresearch-mcp prepare --target targets/digits`, and before
serving when the data folder has no manifest.json.

    python prepare.py --data-dir DIR [--force]

The data is scikit-learn's bundled copy of the UCI "optical recognition of handwritten digits"
test set (sklearn.datasets.load_digits): 1,797 images of 8x8 pixels, each pixel a whole number
0..16, labels 0..9. It ships inside the scikit-learn package, which is why target.toml hides
`sklearn` from training: with the whole set at hand, train.py could train on the val images.

Layout written under DIR:

    split.key          this folder's split secret (32 random bytes as hex, mode 0600), written
                       once and kept by --force; beside the subfolders, never inside one, so no
                       jail mounts it
    train/x.npy        uint8 [n, 64]  pixels 0..16, row-major 8x8; the only split training sees
    train/y.npy        uint8 [n]      labels 0..9
    val/x.npy, val/y.npy              the evaluation split (the evaluator's jail only)
    holdout/x.npy, holdout/y.npy      the sealed split, scored only when the server asks
    manifest.json      bytes and sha256 of every file in train/, val/ and holdout/, written LAST

The split: an HMAC-SHA256 of each image's index in load_digits' order, keyed by the secret,
puts it in a bucket 0..999; buckets 0..599 are train, 600..849 val, 850..999 holdout (about
60/25/15). Within each split the rows are stored in an order drawn from the same secret, so
the stored order says nothing about the original indices. Without split.key nobody can say
which images are in val.

Idempotent: with a valid manifest (every listed file present, right size and sha256) written
under the same secret, a second call prints "data ready" and exits 0 without writing anything.
--force rebuilds the subfolders and the manifest (the secret stays: the val set must not move
under an existing record). The folder is built beside DIR and renamed into place after the
manifest is written, so an interrupted run leaves nothing a later run trusts.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import hmac
import importlib.util
import io
import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

import numpy as np

MANIFEST_VERSION = 1
SPLIT_KEY_FILE = "split.key"
SPLIT_SECRET_BYTES = 32
SPLIT_SECRET_ENV = "AUTORESEARCH_SPLIT_SECRET"  # an operator may fix the split (hex, >= 16 bytes)
MIN_SPLIT_SECRET_BYTES = 16
# (split, buckets out of 1000), in bucket order.
SPLIT_PERMILLE = (("train", 600), ("val", 250), ("holdout", 150))
SPLITS = tuple(name for name, _ in SPLIT_PERMILLE)
N_FEATURES, N_CLASSES, MAX_PIXEL = 64, 10, 16
DATASET = "sklearn.load_digits (UCI optdigits, 1797 x 8x8)"


class PrepareError(Exception):
    """A reason prepare cannot go on, for the operator."""


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 images (uint8 [n, 64]) and labels (uint8 [n]) in load_digits' order.

    Reads scikit-learn's bundled CSV directly (importing sklearn costs ~2 s); falls back to
    sklearn.datasets.load_digits where the file is not where this version keeps it.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise PrepareError(
            "scikit-learn is not installed: the digits data ships inside it "
            "(pip install scikit-learn)"
        )
    csv = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if csv.is_file():
        with gzip.open(csv, "rt") as f:
            table = np.loadtxt(io.StringIO(f.read()), delimiter=",")
        x, y = table[:, :-1], table[:, -1]
    else:  # pragma: no cover - another scikit-learn layout
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x, y = bunch.data, bunch.target
    if (
        x.shape[1] != N_FEATURES
        or x.min() < 0
        or x.max() > MAX_PIXEL
        or set(np.unique(y)) - set(range(N_CLASSES))
    ):
        raise PrepareError(f"unexpected digits data: shape {x.shape}, labels {np.unique(y)}")
    return x.astype(np.uint8), y.astype(np.uint8)


def parse_split_secret(text: str, source: str) -> bytes:
    try:
        secret = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise PrepareError(f"{source} is not hex") from exc
    if len(secret) < MIN_SPLIT_SECRET_BYTES:
        raise PrepareError(
            f"{source} holds {len(secret)} bytes; give at least {MIN_SPLIT_SECRET_BYTES}"
        )
    return secret


def read_split_secret(data_dir: Path) -> bytes | None:
    try:
        text = (data_dir / SPLIT_KEY_FILE).read_text()
    except FileNotFoundError:
        return None
    return parse_split_secret(text, str(data_dir / SPLIT_KEY_FILE))


def split_key_id(secret: bytes) -> str:
    """Names a secret in the manifest without revealing it (a keyed hash of a fixed label)."""
    return hmac.new(secret, b"autoresearch-mcp/split-key-id", hashlib.sha256).hexdigest()[:16]


def keyed_digest(secret: bytes, purpose: str, index: int) -> bytes:
    return hmac.new(secret, f"digits/{purpose}/{index}".encode(), hashlib.sha256).digest()


def split_of(index: int, secret: bytes) -> str:
    """The split of image `index`: its keyed hash bucket (0..999) against SPLIT_PERMILLE."""
    bucket = int.from_bytes(keyed_digest(secret, "split", index)[:4], "big") % 1000
    start = 0
    for name, permille in SPLIT_PERMILLE:
        if bucket < start + permille:
            return name
        start += permille
    return SPLITS[0]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(data_dir: Path) -> dict | None:
    """The manifest if every file it lists exists with its recorded size and sha256, else None."""
    try:
        manifest = json.loads((data_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("manifest_version") != MANIFEST_VERSION:
        return None
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return None
    for name, entry in files.items():
        path = data_dir / name
        if (
            not path.is_file()
            or path.stat().st_size != entry.get("bytes")
            or sha256_file(path) != entry.get("sha256")
        ):
            return None
    return manifest


def prepare(data_dir: Path, *, force: bool = False) -> dict:
    """Build (or verify) the data folder and return its manifest."""
    data_dir = data_dir.expanduser().resolve()
    env_secret = os.environ.get(SPLIT_SECRET_ENV)
    given = parse_split_secret(env_secret, SPLIT_SECRET_ENV) if env_secret else None
    kept = read_split_secret(data_dir)
    if given is not None and kept is not None and given != kept and not force:
        raise PrepareError(
            f"{data_dir / SPLIT_KEY_FILE} holds another secret than ${SPLIT_SECRET_ENV}; "
            "--force re-splits the folder with the given one"
        )
    secret = given or kept or secrets.token_bytes(SPLIT_SECRET_BYTES)
    existing = None if force else read_manifest(data_dir)
    if existing and existing.get("split_key_id") == split_key_id(secret) and kept == secret:
        print(f"data ready in {data_dir} (manifest verified)", file=sys.stderr)
        return existing

    started = time.perf_counter()
    x, y = load_digits_arrays()
    rows: dict[str, list[int]] = {name: [] for name in SPLITS}
    for index in range(len(y)):
        rows[split_of(index, secret)].append(index)
    for name in SPLITS:  # stored in a secret order: row position says nothing about the index
        rows[name].sort(key=lambda i: keyed_digest(secret, "order", i))

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = data_dir.parent / f"{data_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        key_fd = os.open(staging / SPLIT_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(key_fd, "w") as key_file:
            key_file.write(secret.hex() + "\n")
        for name in SPLITS:
            (staging / name).mkdir()
            np.save(staging / name / "x.npy", x[rows[name]], allow_pickle=False)
            np.save(staging / name / "y.npy", y[rows[name]], allow_pickle=False)
        files = {
            p.relative_to(staging).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for name in SPLITS
            for p in sorted((staging / name).rglob("*"))
            if p.is_file()
        }
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "dataset": DATASET,
            "examples": {name: len(rows[name]) for name in SPLITS},
            "features": N_FEATURES,
            "classes": N_CLASSES,
            "split_permille": dict(SPLIT_PERMILLE),
            "split_key_id": split_key_id(secret),  # which secret; never the secret itself
            "files": files,
            "prepare_seconds": round(time.perf_counter() - started, 3),
        }
        # Written last: a folder without a manifest is never trusted.
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if data_dir.exists():
            retired = data_dir.parent / f"{data_dir.name}.partial-old-{os.getpid()}"
            data_dir.rename(retired)
            shutil.rmtree(retired, ignore_errors=True)
        staging.rename(data_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(
        f"prepared {data_dir}: "
        + " / ".join(f"{len(rows[name])} {name}" for name in SPLITS)
        + f" in {manifest['prepare_seconds']:.2f} s",
        file=sys.stderr,
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="the folder to write")
    parser.add_argument(
        "--force", action="store_true", help="rebuild even if the manifest checks out"
    )
    args = parser.parse_args(argv)
    try:
        prepare(args.data_dir, force=args.force)
    except PrepareError as exc:
        print(f"prepare failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
