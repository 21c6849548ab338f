"""Prepare the template's data: noisy samples of a secret smooth 1-D function, split by a secret.

COPY THIS FILE FOR YOUR OWN TARGET and replace `make_examples` with your data source (files you
ship, a package, a download). Keep the rest: the secret, the keyed split, the manifest, the
idempotence. Agents can READ this file (target.toml lists it under `reference`): never put
anything here that gives the val answers away.

    python prepare.py --data-dir DIR [--force]

The server runs it, trusted and outside any jail (`autoresearch-mcp prepare --target DIR`, and
before serving when DIR/manifest.json is missing); options given after `--` are appended.

Layout written under DIR:

    split.key         the secret: 32 random bytes as hex (or $AUTORESEARCH_SPLIT_SECRET), mode
                      0600, written once. It sits beside the subfolders, never inside one: no
                      jail mounts it.
    train/x.npy       float64 [n]  inputs in [-1, 1]     (the only split training sees)
    train/y.npy       float64 [n]  noisy targets
    val/x.npy, val/y.npy            scored by evaluate.py (the evaluator's jail only)
    holdout/x.npy, holdout/y.npy    the sealed split, scored only when the server asks
    manifest.json     bytes and sha256 of EVERY file under train/, val/, holdout/, written last

The data: N_EXAMPLES points x ~ U(-1, 1), y = f(x) + noise of sd NOISE_SD, where f is a sum of
a few sines whose amplitudes, frequencies and phases are drawn from a generator seeded by the
secret. So the function itself is secret per installation (reading this file does not tell you
f), and the best possible val mse is about NOISE_SD ** 2 = 0.01.

The split: an HMAC-SHA256 of each example's index, keyed by the secret, puts it in a bucket
0..999: 0..599 train, 600..849 val, 850..999 holdout. Without split.key nobody can say which
examples are val. (Here the data itself comes from the secret too; in your target it will
usually be public, and then only the keyed split keeps val apart.)
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import shutil
import sys
from pathlib import Path

import numpy as np

# ---- change these for your problem ------------------------------------------------------------
N_EXAMPLES = 2000
NOISE_SD = 0.1
N_SINES = 4
# The splits and their shares of 1000 hash buckets, in bucket order. The names must match
# train_data / eval_data / holdout_data in target.toml.
SPLIT_PERMILLE = (("train", 600), ("val", 250), ("holdout", 150))

# ---- keep these -------------------------------------------------------------------------------
MANIFEST_VERSION = 1
SPLIT_KEY_FILE = "split.key"
SPLIT_SECRET_BYTES = 32
# The operator's secret, hex (>= 16 bytes): fixes the split for reproducible research, and the
# server hands its own to every Ray node, which must hold out exactly the server's val set.
SPLIT_SECRET_ENV = "AUTORESEARCH_SPLIT_SECRET"
MIN_SPLIT_SECRET_BYTES = 16
SPLITS = tuple(name for name, _ in SPLIT_PERMILLE)


def make_examples(secret: bytes) -> dict[str, np.ndarray]:
    """All examples, as arrays of equal length (one file per array per split). REPLACE THIS.

    Here: a smooth function drawn from the secret, sampled with noise. Your version might load
    a CSV, a folder of images or a package's bundled data set (then list that package under
    hidden_from_training in target.toml, or training could read val from it).
    """
    seed = int.from_bytes(hmac.new(secret, b"template/data", hashlib.sha256).digest()[:8], "big")
    rng = np.random.default_rng(seed)
    amplitude = rng.uniform(0.3, 1.0, N_SINES)
    frequency = rng.uniform(1.0, 8.0, N_SINES)
    phase = rng.uniform(0.0, 2 * np.pi, N_SINES)
    x = rng.uniform(-1.0, 1.0, N_EXAMPLES)
    f = (amplitude * np.sin(np.outer(x, frequency) + phase)).sum(axis=1)
    y = f + rng.normal(0.0, NOISE_SD, N_EXAMPLES)
    return {"x": x, "y": y}


def keyed_digest(secret: bytes, purpose: str, index: int) -> bytes:
    return hmac.new(secret, f"template/{purpose}/{index}".encode(), hashlib.sha256).digest()


def split_of(index: int, secret: bytes) -> str:
    """The split of example `index`: its keyed hash bucket (0..999) against SPLIT_PERMILLE."""
    bucket = int.from_bytes(keyed_digest(secret, "split", index)[:4], "big") % 1000
    start = 0
    for name, permille in SPLIT_PERMILLE:
        if bucket < start + permille:
            return name
        start += permille
    return SPLITS[0]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_secret(data_dir: Path) -> bytes | None:
    try:
        return bytes.fromhex((data_dir / SPLIT_KEY_FILE).read_text().strip())
    except FileNotFoundError:
        return None


def manifest_ok(data_dir: Path, secret: bytes | None) -> bool:
    """True when manifest.json lists files that are all there, unchanged, split by this secret."""
    try:
        manifest = json.loads((data_dir / "manifest.json").read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if secret is None or manifest.get("split_key_id") != key_id(secret) or not files:
        return False
    return all(
        (data_dir / name).is_file()
        and (data_dir / name).stat().st_size == entry["bytes"]
        and sha256_file(data_dir / name) == entry["sha256"]
        for name, entry in files.items()
    )


def key_id(secret: bytes) -> str:
    """Names the secret in the manifest without revealing it."""
    return hmac.new(secret, b"autoresearch-mcp/split-key-id", hashlib.sha256).hexdigest()[:16]


def secret_from_environment() -> bytes | None:
    """The operator's secret from $AUTORESEARCH_SPLIT_SECRET, or None when it is not set."""
    text = os.environ.get(SPLIT_SECRET_ENV, "").strip()
    if not text:
        return None
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise SystemExit(f"prepare: ${SPLIT_SECRET_ENV} is not hex") from None
    if len(secret) < MIN_SPLIT_SECRET_BYTES:
        raise SystemExit(
            f"prepare: ${SPLIT_SECRET_ENV} holds {len(secret)} bytes; give at least "
            f"{MIN_SPLIT_SECRET_BYTES}"
        )
    return secret


def prepare(data_dir: Path, force: bool = False) -> None:
    data_dir = data_dir.expanduser().resolve()
    kept, given = read_secret(data_dir), secret_from_environment()
    if given is not None and kept is not None and given != kept and not force:
        raise SystemExit(
            f"prepare: {data_dir / SPLIT_KEY_FILE} holds another secret than ${SPLIT_SECRET_ENV}; "
            "--force re-splits the folder with the given one"
        )
    secret = given or kept
    if not force and manifest_ok(data_dir, secret) and secret == kept:
        print(f"data ready in {data_dir} (manifest verified)", file=sys.stderr)
        return  # idempotent: nothing written
    secret = secret or secrets.token_bytes(SPLIT_SECRET_BYTES)  # --force keeps the secret

    arrays = make_examples(secret)
    n = len(next(iter(arrays.values())))
    rows: dict[str, list[int]] = {name: [] for name in SPLITS}
    for index in range(n):
        rows[split_of(index, secret)].append(index)
    for name in SPLITS:  # a secret order: a row's position says nothing about its index
        rows[name].sort(key=lambda i: keyed_digest(secret, "order", i))

    # Build beside DIR, rename into place at the end: an interrupted run leaves nothing trusted.
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = data_dir.parent / f"{data_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        fd = os.open(staging / SPLIT_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret.hex() + "\n")
        for name in SPLITS:
            (staging / name).mkdir()
            for array_name, array in arrays.items():
                np.save(staging / name / f"{array_name}.npy", array[rows[name]], allow_pickle=False)
        files = {
            p.relative_to(staging).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for name in SPLITS
            for p in sorted((staging / name).rglob("*"))
            if p.is_file()
        }
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "examples": {name: len(rows[name]) for name in SPLITS},
            "split_key_id": key_id(secret),
            "files": files,  # the server reads this: every file, its size and sha256
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))  # LAST
        if data_dir.exists():
            retired = data_dir.parent / f"{data_dir.name}.partial-old-{os.getpid()}"
            data_dir.rename(retired)
            shutil.rmtree(retired, ignore_errors=True)
        staging.rename(data_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"prepared {data_dir}: {manifest['examples']}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--force", action="store_true", help="rebuild (the secret is kept)")
    args = parser.parse_args(argv)
    prepare(args.data_dir, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
