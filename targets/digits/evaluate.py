"""The trusted evaluator of the digits target: accuracy of a model artifact on the val split.

FIXED PART OF THE RESEARCH TARGET: agents can read this file but never edit it; it is never
copied into a run directory. The server runs it in its own jail that can read the artifact,
val/ (and holdout/ when it asks for it), and can write nothing.

    python evaluate.py --artifact model.npz --data-dir DIR [--device D] [--report-fd N]
                       [--windows W] [--holdout] [--wait] [--warm-cuda] [--context N]

The artifact is hostile: an agent wrote the code that wrote it. Nothing in it is ever run.
1. Opening it: a regular file of at most MAX_ARTIFACT_BYTES; a zip (.npz) of at most
   MAX_ARRAYS members (counted from the zip's end records, and its central directory at most
   MAX_DIRECTORY_BYTES, before zipfile parses that directory), each "<name>.npy" with a plain
   name, at most MAX_UNPACKED_BYTES unpacked in all (checked before anything is decompressed),
   each header checked (at most 2 dimensions, each 0..MAX_WIDTH, the size it implies) and then
   read with numpy's .npy reader and allow_pickle=False (an object array is refused, never
   unpickled).
2. The spec: the member "spec" is a 0-d unicode array holding JSON,
   {"format": "digits-mlp/1", "layers": [...]}. Each layer is one of
       {"op": "linear", "weight": NAME, "bias": NAME or null}   weight float32 [out, in]
       {"op": "relu"} {"op": "gelu"} {"op": "tanh"} {"op": "sigmoid"} {"op": "silu"}
       {"op": "layernorm", "weight": NAME or null, "bias": NAME or null, "eps": float}
       {"op": "residual", "layers": [...]}                      x + f(x), f keeps the width
   checked against the widths they see (64 in, 10 out), every named array float32, of the
   shape its layer needs, finite; every array in the file used by the spec. At most MAX_LAYERS
   layers in all, MAX_NESTING residuals deep, and at most MAX_COST compute units per example,
   every op counted (the compute cap): a linear layer costs in*out (its multiply-adds), gelu
   and silu COST_GELU_SILU per feature, relu, tanh, sigmoid and layernorm COST_ELEMENTWISE per
   feature, a residual's add 1 per feature. Anything else is status invalid_artifact with a
   reason naming the rule.
3. The forward pass is computed here, in numpy, in float64, on x / 16 (pixels 0..1): gelu is
   the exact (erf) form as torch's default, layernorm normalizes each example over its features
   (no batch statistics exist in this whitelist). The output must be finite logits [N, 10].
4. The independence probe: every val example is scored in a secret random order and batching
   (the secrets module: no seed anyone can read), then once more in another secret order and
   batching with decoy rows of noise mixed in; each example's logits must agree between the two
   (PROBE_TOLERANCE), else status integrity_fail. With this whitelist an honest model always
   passes; the probe is there so that an op added later that lets examples see each other (batch
   statistics, attention across the batch) cannot score its val examples together unnoticed.
5. accuracy = mean(argmax logits == label) (the metric, maximize) and log_loss = mean clipped
   negative log-softmax of the label, in nats (the tie-break, minimize), from the first pass:
   computed in float64, each example's probability of its label floored at LABEL_PROB_FLOOR
   (1e-4), so one example adds at most ln(1e4) = 9.2103 nats and the tie-break cannot carry
   more than a bounded figure. A log_loss that is not finite anyway is status invalid_artifact.
6. With --holdout: the holdout split is scored the same way (one pass) and reported apart.

The report is ONE JSON line: on stdout, or with --report-fd N only on fd N (stdout then goes to
stderr, the log). It holds status ("ok", "invalid_artifact", "integrity_fail", "error",
"not_started") and reason, accuracy, log_loss, examples, hashes {"evaluator": sha256 of this
file, "val/x.npy": ..., "val/y.npy": ...} (and holdout/ files with --holdout), probes {probes:
examples compared, passes: layouts compared}, load/score/probe/total_seconds (warmup_seconds
with --wait) and with --holdout "holdout": {status, value, log_loss, examples}. It is strict JSON
(written with allow_nan=False: a report that could not be becomes status "error" with a fixed
reason). The exit code is 0 only for status ok (EXIT_* below, the same as the GPT target's
evaluator).

With --wait it loads the data first, prints a line to stderr, and reads one line from stdin:
it scores only if that line is "go", else it reports not_started.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import re
import secrets
import struct
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

EXIT_OK, EXIT_INVALID_ARTIFACT, EXIT_INTEGRITY, EXIT_ERROR, EXIT_NOT_STARTED = 0, 3, 4, 5, 6

N_FEATURES, N_CLASSES, MAX_PIXEL = 64, 10, 16.0
FORMAT = "digits-mlp/1"
MAX_ARTIFACT_BYTES = 64 << 20  # the .npz on disk
# All members unpacked (a compressed npz cannot hide a bomb): MAX_COST bounds the weights a valid
# model can use to ~64 MiB of float32, every array must be used, so more is never valid.
MAX_UNPACKED_BYTES = 96 << 20
MAX_ARRAYS = 256
# The zip's central directory, read before any member (numpy.savez writes ~100 bytes a member).
MAX_DIRECTORY_BYTES = MAX_ARRAYS * 1024
MAX_SPEC_CHARS = 64 << 10
MAX_LAYERS = 256  # layers in all, nested ones included
MAX_NESTING = 4  # residuals inside residuals
MAX_WIDTH = 1 << 16
# The compute cap: cost units per example, every op counted (~16.8 M: far beyond what trains in
# the budget; a depth-8 width-1024 MLP costs ~8.7 M). A linear layer costs its multiply-adds
# (in * out); elementwise ops cost per feature, weighted by their numpy passes here.
MAX_COST = 1 << 24
COST_GELU_SILU = 200  # per feature (erf / tanh forms: ~50 times a multiply-add, measured)
COST_ELEMENTWISE = 50  # per feature: relu, tanh, sigmoid, layernorm
COST_RESIDUAL_ADD = 10  # per feature
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$")
ACTIVATIONS = ("relu", "gelu", "tanh", "sigmoid", "silu")
OPS = ("linear", "layernorm", "residual", *ACTIVATIONS)
PROBE_TOLERANCE = 1e-6  # float64, per example: an honest model agrees to ~1e-15
MAX_BATCH = 64  # the secret batchings use batches of 1..MAX_BATCH examples
DECOYS = 8  # rows of noise mixed into the probe pass
# log_loss: each example's probability of its label is floored here (loss <= ln 1e4 = 9.2103).
LABEL_PROB_FLOOR = 1e-4
MAX_EXAMPLE_LOSS = -math.log(LABEL_PROB_FLOOR)
# Zip end records (the same layout zipfile reads).
EOCD_SIGNATURE, EOCD_SIZE = b"PK\x05\x06", 22
ZIP64_LOCATOR_SIGNATURE, ZIP64_LOCATOR_SIZE = b"PK\x06\x07", 20
ZIP64_EOCD_SIGNATURE, ZIP64_EOCD_SIZE = b"PK\x06\x06", 56
MAX_ZIP_COMMENT = (1 << 16) - 1
SPLITS = {"val": "val", "holdout": "holdout"}


class InvalidArtifact(Exception):
    """The artifact breaks a rule of the format: status invalid_artifact."""


class IntegrityFailure(Exception):
    """The model broke a rule of the metric: status integrity_fail."""


# ---------------------------------------------------------------- data
class Split:
    """One split's images (float64 [n, 64], scaled to 0..1) and labels, with the hashes of the files read."""

    def __init__(self, data_dir: Path, name: str, cap: int | None) -> None:
        self.hashes: dict[str, str] = {}
        x = self._read(data_dir, f"{name}/x.npy")
        y = self._read(data_dir, f"{name}/y.npy")
        if x.ndim != 2 or x.shape[1] != N_FEATURES or y.shape != (x.shape[0],) or len(y) == 0:
            raise ValueError(f"{name}/ holds arrays of unexpected shapes {x.shape} and {y.shape}")
        if cap is not None:
            x, y = x[: max(1, cap)], y[: max(1, cap)]
        self.x = x.astype(np.float64) / MAX_PIXEL
        self.y = y.astype(np.int64)
        if self.y.min() < 0 or self.y.max() >= N_CLASSES:
            raise ValueError(f"{name}/y.npy holds labels outside 0..9")

    def _read(self, data_dir: Path, rel: str) -> np.ndarray:
        """Hash exactly the bytes that are loaded (not a second read of the file)."""
        data = (data_dir / rel).read_bytes()
        self.hashes[rel] = hashlib.sha256(data).hexdigest()
        return np.load(io.BytesIO(data), allow_pickle=False)


# ---------------------------------------------------------------- the artifact
def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a hostile .npz, under every cap, never unpickling anything."""
    try:
        if not path.is_file():
            raise InvalidArtifact("the artifact model.npz is missing or not a regular file")
        size = path.stat().st_size
    except OSError as exc:
        raise InvalidArtifact("the artifact model.npz cannot be read") from exc
    if size > MAX_ARTIFACT_BYTES:
        raise InvalidArtifact(
            f"model.npz is {size:,} bytes; the limit is {MAX_ARTIFACT_BYTES:,} (64 MiB)"
        )
    if not zipfile.is_zipfile(path):
        raise InvalidArtifact("model.npz is not an .npz (zip) file: save it with numpy.savez")
    check_directory(path, size)
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_ARRAYS:
                raise InvalidArtifact(
                    f"model.npz holds {len(members)} arrays; at most {MAX_ARRAYS}"
                )
            if sum(m.file_size for m in members) > MAX_UNPACKED_BYTES:
                raise InvalidArtifact(
                    f"model.npz unpacks to more than {MAX_UNPACKED_BYTES:,} bytes (96 MiB)"
                )
            for member in members:
                name = member.filename[:-4] if member.filename.endswith(".npy") else ""
                if not NAME.match(name):
                    raise InvalidArtifact(
                        "model.npz holds a member that is not '<name>.npy' with a plain name "
                        "(letters, digits, '_' and '.', at most 64)"
                    )
                if name in arrays:
                    raise InvalidArtifact(f"model.npz holds the array {name!r} twice")
                if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise InvalidArtifact("model.npz uses a compression other than none or deflate")
                with archive.open(member) as f:
                    data = f.read(member.file_size + 1)
                if len(data) != member.file_size:
                    raise InvalidArtifact(f"the array {name!r} is not the size its entry says")
                arrays[name] = read_npy(name, data)
    except InvalidArtifact:
        raise
    except (
        zipfile.BadZipFile,
        OSError,
        EOFError,
        ValueError,
        RuntimeError,
        NotImplementedError,
        OverflowError,
        TypeError,
        MemoryError,
        struct.error,
    ):
        raise InvalidArtifact("model.npz is not a readable .npz (zip) file") from None
    return arrays


def check_directory(path: Path, size: int) -> None:
    """The member count and central-directory size from the zip's end records, checked BEFORE
    zipfile parses the directory (it reads the whole directory first, whatever it holds).

    Finds the end-of-central-directory record the way zipfile does (the last 22 bytes, else the
    last occurrence of its signature in the last 64 KiB), and the zip64 end record it may point
    to (both places a zipfile version may read it from); every count and directory size any of
    them claims must be within the caps. numpy.savez never writes a zip64 end record for a file
    this small, so a valid model always passes.
    """
    try:
        with path.open("rb") as f:
            start = max(
                0, size - MAX_ZIP_COMMENT - EOCD_SIZE - ZIP64_LOCATOR_SIZE - ZIP64_EOCD_SIZE
            )
            f.seek(start)
            tail = f.read()
            search_from = max(0, size - (1 << 16) - EOCD_SIZE) - start
            if tail[-EOCD_SIZE:][:4] == EOCD_SIGNATURE and tail[-2:] == b"\0\0":
                at = len(tail) - EOCD_SIZE
            else:
                at = tail.rfind(EOCD_SIGNATURE, search_from)
            if at < 0 or len(tail) - at < EOCD_SIZE:
                raise InvalidArtifact("model.npz is not a readable .npz (zip) file")
            _, _, _, here, total, directory, _, _ = struct.unpack(
                "<4s4H2LH", tail[at : at + EOCD_SIZE]
            )
            claims = [(here, total, directory)]
            locator = tail[max(0, at - ZIP64_LOCATOR_SIZE) : at]
            if len(locator) == ZIP64_LOCATOR_SIZE and locator[:4] == ZIP64_LOCATOR_SIGNATURE:
                _, _, offset, _ = struct.unpack("<4sLQL", locator)
                places = {at - ZIP64_LOCATOR_SIZE - ZIP64_EOCD_SIZE + start, offset}
                for place in places:
                    if not 0 <= place <= size - ZIP64_EOCD_SIZE:
                        continue
                    f.seek(place)
                    record = f.read(ZIP64_EOCD_SIZE)
                    if len(record) == ZIP64_EOCD_SIZE and record[:4] == ZIP64_EOCD_SIGNATURE:
                        fields = struct.unpack("<4sQ2H2L4Q", record)
                        claims.insert(0, (fields[6], fields[7], fields[8]))
    except OSError:
        raise InvalidArtifact("the artifact model.npz cannot be read") from None
    for here, total, directory in claims:
        if max(here, total) > MAX_ARRAYS:
            raise InvalidArtifact(
                f"model.npz holds {max(here, total):,} arrays; at most {MAX_ARRAYS}"
            )
        if directory > MAX_DIRECTORY_BYTES:
            raise InvalidArtifact(
                f"model.npz's zip directory is {directory:,} bytes; at most "
                f"{MAX_DIRECTORY_BYTES:,} ({MAX_ARRAYS} arrays)"
            )


def read_npy(name: str, data: bytes) -> np.ndarray:
    """One .npy member: its header checked against its size first (a header may claim any
    shape, and numpy would allocate it before noticing the data is short), never unpickled."""
    buffer = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buffer)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(buffer)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(buffer)
        else:
            raise ValueError("unsupported .npy version")
    except (ValueError, TypeError, OverflowError, MemoryError, SyntaxError, RecursionError):
        raise InvalidArtifact(f"the array {name!r} is not a valid .npy array") from None
    # Before any arithmetic on the shape and before numpy sees it (a header may claim
    # (0, 10**20): zero bytes, and numpy overflows on it).
    if (
        not isinstance(shape, tuple)
        or len(shape) > 2
        or not all(type(d) is int and 0 <= d <= MAX_WIDTH for d in shape)
    ):
        raise InvalidArtifact(
            f"the array {name!r} has a shape outside the format: at most 2 dimensions, "
            f"each 0..{MAX_WIDTH}"
        )
    if dtype.hasobject:
        raise InvalidArtifact(
            f"the array {name!r} holds Python objects; only numeric arrays and the spec string "
            "are read (pickles are never loaded)"
        )
    if math.prod(shape) * dtype.itemsize != len(data) - buffer.tell():
        raise InvalidArtifact(f"the array {name!r} holds another size than its header says")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, TypeError, OverflowError, MemoryError, EOFError):
        raise InvalidArtifact(f"the array {name!r} is not a valid .npy array") from None
    if not isinstance(array, np.ndarray):
        raise InvalidArtifact(f"the member {name!r} is not a .npy array")
    return array


def read_spec(arrays: dict[str, np.ndarray]) -> dict:
    spec = arrays.get("spec")
    if spec is None:
        raise InvalidArtifact("model.npz holds no 'spec' array (the JSON layer spec)")
    if spec.dtype.kind != "U" or spec.ndim != 0:
        raise InvalidArtifact(
            "the 'spec' array must be a 0-d unicode string: np.array(json.dumps(spec))"
        )
    text = str(spec[()])
    if len(text) > MAX_SPEC_CHARS:
        raise InvalidArtifact(f"the spec is longer than {MAX_SPEC_CHARS:,} characters")
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidArtifact("the spec is not valid JSON (or is nested too deep)") from None
    if not isinstance(parsed, dict) or parsed.get("format") != FORMAT:
        raise InvalidArtifact(f'the spec must be a JSON object with "format": "{FORMAT}"')
    if set(parsed) - {"format", "layers"}:
        raise InvalidArtifact('the spec may hold only "format" and "layers"')
    return parsed


class Model:
    """A validated spec bound to its arrays; the forward pass is computed here."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        spec = read_spec(arrays)
        self.arrays = {k: v for k, v in arrays.items() if k != "spec"}
        self.used: set[str] = set()
        self.layer_count = 0
        self.cost = 0
        self.layers, width = self._check_layers(spec.get("layers"), N_FEATURES, 0, "layers")
        if width != N_CLASSES:
            raise InvalidArtifact(
                f"the model's output width is {width}; it must be {N_CLASSES} (one logit per digit)"
            )
        unused = sorted(set(self.arrays) - self.used)
        if unused:
            raise InvalidArtifact(f"model.npz holds arrays the spec does not use: {unused[:5]}")
        # float64 copies, once
        self.weights = {k: self.arrays[k].astype(np.float64) for k in self.used}

    def _array(self, name: Any, shape: tuple[int, ...], where: str) -> str:
        if not isinstance(name, str) or not NAME.match(name) or name == "spec":
            raise InvalidArtifact(f"{where}: an array name must be a plain name string")
        if name not in self.arrays:
            raise InvalidArtifact(f"{where}: the array {name!r} is not in model.npz")
        array = self.arrays[name]
        if array.dtype != np.float32:
            raise InvalidArtifact(f"{where}: the array {name!r} must be float32, not {array.dtype}")
        if array.shape != shape:
            raise InvalidArtifact(
                f"{where}: the array {name!r} has shape {list(array.shape)}; the layer needs {list(shape)}"
            )
        if not np.isfinite(array).all():
            raise InvalidArtifact(f"{where}: the array {name!r} holds NaN or infinite values")
        self.used.add(name)
        return name

    def _check_layers(self, layers: Any, width: int, depth: int, where: str) -> tuple[list, int]:
        if not isinstance(layers, list) or not layers:
            raise InvalidArtifact(f"{where} must be a non-empty list of layers")
        checked = []
        for i, layer in enumerate(layers):
            here = f"{where}[{i}]"
            self.layer_count += 1
            if self.layer_count > MAX_LAYERS:
                raise InvalidArtifact(f"the spec holds more than {MAX_LAYERS} layers")
            if not isinstance(layer, dict) or not isinstance(layer.get("op"), str):
                raise InvalidArtifact(f'{here} must be an object with an "op" string')
            op = layer["op"]
            if op not in OPS:
                raise InvalidArtifact(
                    f"{here}: the op {op[:40]!r} is not allowed; allowed: {', '.join(OPS)}"
                )
            allowed_keys = {
                "linear": {"op", "weight", "bias"},
                "layernorm": {"op", "weight", "bias", "eps"},
                "residual": {"op", "layers"},
            }.get(op, {"op"})
            if set(layer) - allowed_keys:
                raise InvalidArtifact(f"{here}: a {op} layer may hold only {sorted(allowed_keys)}")
            if op == "linear":
                weight = layer.get("weight")
                if not isinstance(weight, str) or weight not in self.arrays:
                    raise InvalidArtifact(f"{here}: linear needs a weight array in model.npz")
                shape = self.arrays[weight].shape
                if len(shape) != 2 or shape[1] != width or not 1 <= shape[0] <= MAX_WIDTH:
                    raise InvalidArtifact(
                        f"{here}: the weight {weight!r} has shape {list(shape)}; a linear layer "
                        f"on width {width} needs [out, {width}] with 1 <= out <= {MAX_WIDTH}"
                    )
                out = shape[0]
                self._array(weight, (out, width), here)
                bias = layer.get("bias")
                if bias is not None:
                    self._array(bias, (out,), here)
                self._charge(out * width)
                checked.append(("linear", weight, bias))
                width = out
            elif op == "layernorm":
                eps = layer.get("eps", 1e-5)
                if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps <= 1:
                    raise InvalidArtifact(f"{here}: layernorm eps must be a number in (0, 1]")
                weight, bias = layer.get("weight"), layer.get("bias")
                if weight is not None:
                    self._array(weight, (width,), here)
                if bias is not None:
                    self._array(bias, (width,), here)
                self._charge(COST_ELEMENTWISE * width)
                checked.append(("layernorm", weight, bias, float(eps)))
            elif op == "residual":
                if depth >= MAX_NESTING:
                    raise InvalidArtifact(f"{here}: residuals nest at most {MAX_NESTING} deep")
                inner, inner_width = self._check_layers(layer.get("layers"), width, depth + 1, here)
                if inner_width != width:
                    raise InvalidArtifact(
                        f"{here}: a residual's layers must keep the width ({width} -> {inner_width})"
                    )
                self._charge(COST_RESIDUAL_ADD * width)
                checked.append(("residual", inner))
            else:
                self._charge(
                    (COST_GELU_SILU if op in ("gelu", "silu") else COST_ELEMENTWISE) * width
                )
                checked.append((op,))
        return checked, width

    def _charge(self, cost: int) -> None:
        """Count one op's cost per example against the compute cap, refusing past it."""
        self.cost += cost
        if self.cost > MAX_COST:
            raise InvalidArtifact(
                f"the model costs more than the compute cap of {MAX_COST:,} units per example "
                f"(every op counts: linear in*out, gelu/silu {COST_GELU_SILU} per feature, relu, "
                f"tanh, sigmoid and layernorm {COST_ELEMENTWISE}, a residual's add "
                f"{COST_RESIDUAL_ADD})"
            )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return self._run(self.layers, x)

    def _run(self, layers: list, h: np.ndarray) -> np.ndarray:
        for layer in layers:
            op = layer[0]
            if op == "linear":
                h = h @ self.weights[layer[1]].T
                if layer[2] is not None:
                    h = h + self.weights[layer[2]]
            elif op == "relu":
                h = np.maximum(h, 0.0)
            elif op == "gelu":
                h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
            elif op == "tanh":
                h = np.tanh(h)
            elif op == "sigmoid":
                h = 0.5 * (1.0 + np.tanh(0.5 * h))
            elif op == "silu":
                h = h * 0.5 * (1.0 + np.tanh(0.5 * h))
            elif op == "layernorm":
                mean = h.mean(axis=-1, keepdims=True)
                var = ((h - mean) ** 2).mean(axis=-1, keepdims=True)
                h = (h - mean) / np.sqrt(var + layer[3])
                if layer[1] is not None:
                    h = h * self.weights[layer[1]]
                if layer[2] is not None:
                    h = h + self.weights[layer[2]]
            elif op == "residual":
                h = h + self._run(layer[1], h)
        return h


def erf(x: np.ndarray) -> np.ndarray:
    """erf to ~1e-7 (Abramowitz & Stegun 7.1.26): numpy has none, and scipy is not imported."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return sign * (1.0 - poly * np.exp(-a * a))


# ---------------------------------------------------------------- scoring and the probe
def secret_layout(n: int) -> tuple[np.ndarray, list[int]]:
    """A permutation of n and batch sizes of 1..MAX_BATCH summing to n, from the secrets module."""
    rng = np.random.default_rng(secrets.randbits(128))
    order = rng.permutation(n)
    sizes, left = [], n
    while left:
        size = min(left, 1 + secrets.randbelow(MAX_BATCH))
        sizes.append(size)
        left -= size
    return order, sizes


def run_layout(model: Model, x: np.ndarray, decoys: int = 0) -> np.ndarray:
    """Logits [n, 10] of every example, computed in a fresh secret order and batching.

    With ``decoys``, that many rows of noise are spread among the batches (their logits dropped).
    """
    n = len(x)
    order, sizes = secret_layout(n)
    rng = np.random.default_rng(secrets.randbits(128))
    noise = rng.random((decoys, x.shape[1]))
    chosen = rng.choice(len(sizes), size=min(decoys, len(sizes)), replace=False) if decoys else []
    decoy_of = {int(b): k for k, b in enumerate(chosen)}  # batch -> its row of noise
    logits = np.empty((n, N_CLASSES))
    start = at = 0
    for b, size in enumerate(sizes):
        rows = order[start : start + size]
        batch = x[rows]
        extra = 0
        if b in decoy_of:
            extra = 1
            at = secrets.randbelow(size + 1)
            k = decoy_of[b]
            batch = np.concatenate([batch[:at], noise[k : k + 1], batch[at:]])
        out = model(batch)
        if not isinstance(out, np.ndarray) or out.shape != (size + extra, N_CLASSES):
            raise InvalidArtifact(f"the model's output is not [batch, {N_CLASSES}] logits")
        if not np.isfinite(out).all():
            raise InvalidArtifact("the model's output holds NaN or infinite logits for some inputs")
        if extra:
            out = np.concatenate([out[:at], out[at + 1 :]])
        logits[rows] = out
        start += size
    return logits


def metrics(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean clipped log-loss in nats).

    Each example's loss is -log_softmax(logits)[label] in float64, clipped at MAX_EXAMPLE_LOSS
    (its label's probability floored at LABEL_PROB_FLOOR): every term is in [0, 9.2103], so the
    mean is too, whatever scale the logits have (a bounded figure, never inf). A result that is
    not finite anyway is the model's fault: invalid_artifact, with a fixed reason.
    """
    logits = np.asarray(logits, dtype=np.float64)
    accuracy = float((logits.argmax(axis=1) == y).mean())
    with np.errstate(all="ignore"):
        shifted = logits - logits.max(axis=1, keepdims=True)  # <= 0 (-inf if the spread overflows)
        log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        losses = np.minimum(-log_softmax[np.arange(len(y)), y], MAX_EXAMPLE_LOSS)
        log_loss = float(losses.mean())
    if not (math.isfinite(accuracy) and math.isfinite(log_loss)):
        raise InvalidArtifact("the model's log-loss is not a finite number")
    return accuracy, min(max(log_loss, 0.0), MAX_EXAMPLE_LOSS)


def probe(model: Model, x: np.ndarray, scored: np.ndarray) -> dict[str, int]:
    """Score every example again in another secret layout, decoys mixed in: logits must agree."""
    again = run_layout(model, x, decoys=DECOYS)
    if not np.allclose(again, scored, rtol=PROBE_TOLERANCE, atol=PROBE_TOLERANCE):
        raise IntegrityFailure(
            "the model's logits for an example changed with the other examples in its batch or "
            "its position: examples must be scored independently"
        )
    return {"probes": len(x), "passes": 2}


# ---------------------------------------------------------------- the run
def evaluator_hash() -> str:
    return hashlib.sha256(Path(__file__).resolve().read_bytes()).hexdigest()


def run_evaluation(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    report: dict[str, Any] = {}
    try:
        began = time.perf_counter()
        val = Split(args.data_dir, "val", args.windows)
        holdout: Split | str | None = None
        if args.holdout:
            try:
                holdout = Split(args.data_dir, "holdout", args.windows)
            except Exception as exc:  # the holdout never changes the run's status
                holdout = f"the holdout split could not be read ({type(exc).__name__})"
        if args.wait:
            warm = time.perf_counter() - began
            print(f"evaluator warm in {warm:.2f} s, waiting for 'go'", file=sys.stderr, flush=True)
            if sys.stdin.readline().strip() != "go":
                report.update(
                    status="not_started", reason="stdin closed without 'go': nothing to score"
                )
                return report, EXIT_NOT_STARTED
            report["warmup_seconds"] = round(warm, 3)
        started = time.perf_counter()
        hashes = {"evaluator": evaluator_hash(), **val.hashes}
        if isinstance(holdout, Split):
            hashes.update(holdout.hashes)
        report["hashes"] = hashes

        t = time.perf_counter()
        model = Model(read_arrays(args.artifact))
        load_seconds = time.perf_counter() - t
        t = time.perf_counter()
        logits = run_layout(model, val.x)
        accuracy, log_loss = metrics(logits, val.y)
        score_seconds = time.perf_counter() - t
        t = time.perf_counter()
        report["probes"] = probe(model, val.x, logits)
        probe_seconds = time.perf_counter() - t
        total_seconds = time.perf_counter() - started
        report.update(
            accuracy=accuracy,
            log_loss=log_loss,
            examples=len(val.y),
            load_seconds=round(load_seconds, 4),
            score_seconds=round(score_seconds, 4),
            probe_seconds=round(probe_seconds, 4),
            total_seconds=round(total_seconds, 4),
        )
        if holdout is not None:
            report["holdout"] = score_holdout(model, holdout)
        report["status"] = "ok"
        return report, EXIT_OK
    except InvalidArtifact as exc:
        report.update(status="invalid_artifact", reason=str(exc)[:1000])
        return report, EXIT_INVALID_ARTIFACT
    except IntegrityFailure as exc:
        report.update(status="integrity_fail", reason=str(exc)[:1000])
        return report, EXIT_INTEGRITY
    except Exception as exc:
        report.update(
            status="error", reason=f"the evaluator failed: {type(exc).__name__}: {str(exc)[:400]}"
        )
        return report, EXIT_ERROR


def score_holdout(model: Model, holdout: Split | str) -> dict[str, Any]:
    if isinstance(holdout, str):
        return {"status": "error", "reason": holdout}
    try:
        accuracy, log_loss = metrics(run_layout(model, holdout.x), holdout.y)
    except InvalidArtifact as exc:
        return {"status": "invalid_artifact", "reason": str(exc)[:1000]}
    except Exception:
        return {"status": "error", "reason": "the model failed on the holdout split"}
    return {"status": "ok", "value": accuracy, "log_loss": log_loss, "examples": len(holdout.y)}


def report_to(fd: int, data: bytes) -> None:
    """Write the report line to its own channel, all of it, then close the channel."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score a digits model artifact: one JSON report.")
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True, help="holds val/ (and holdout/)")
    parser.add_argument(
        "--device",
        default=os.environ.get("AR_DEVICE", "cpu"),
        help="accepted; numpy runs on the CPU",
    )
    parser.add_argument(
        "--windows", type=int, default=None, help="score at most this many examples (tests)"
    )
    parser.add_argument(
        "--holdout", action="store_true", help="also score the sealed holdout split"
    )
    parser.add_argument(
        "--wait", action="store_true", help="load the data, then wait for a line 'go' on stdin"
    )
    parser.add_argument(
        "--warm-cuda", action="store_true", help="accepted and ignored (no CUDA here)"
    )
    parser.add_argument("--context", type=int, default=None, help="accepted and ignored")
    parser.add_argument(
        "--report-fd", type=int, default=None, help="write the report to this inherited fd"
    )
    args = parser.parse_args(argv)
    if args.windows is not None and args.windows < 1:
        parser.error("--windows must be at least 1")
    if args.report_fd is not None:
        # The report channel is only ever written by report_to; anything printed goes to fd 2.
        try:
            if args.report_fd < 3:
                raise OSError("0, 1 and 2 are the standard streams")
            os.fstat(args.report_fd)
            os.set_inheritable(args.report_fd, False)
        except OSError as exc:
            print(f"--report-fd {args.report_fd} is not usable ({exc})", file=sys.stderr)
            return EXIT_ERROR
        sys.stdout.flush()
        os.dup2(2, 1)
        sys.stdout = sys.stderr
    report, code = run_evaluation(args)
    try:
        line = json.dumps(report, allow_nan=False) + "\n"  # strict JSON: never NaN or Infinity
    except (ValueError, TypeError):
        report = {
            "status": "error",
            "reason": "the evaluator's report held a value strict JSON cannot carry (NaN or infinity)",
        }
        code = EXIT_ERROR
        line = json.dumps(report) + "\n"
    if args.report_fd is None:
        print(line, end="", flush=True)
    else:
        report_to(args.report_fd, line.encode())
    return code


if __name__ == "__main__":
    sys.exit(main())
