"""The trusted evaluator: computes val_bpb of a trained model artifact, with integrity checks.

FIXED PART OF THE RESEARCH TARGET: agents can read this file but never edit it; it is
never copied into a run directory. The server runs it in its own jail that can read the
artifact, the tokenizer and the val split, and can write nothing.

What it does, in order:
1. Opens the artifact (a torch.export .pt2 zip) WITHOUT handing it to torch as it is:
   loading a hostile .pt2 runs code (pickles, guard code, sympy strings, shared objects).
   It allows only the expected entries, validates the JSON (no pickles, no guard code,
   sympy strings from a strict grammar, only allowed ops) and writes a new archive in
   memory; only that one is loaded.
2. Checks the loaded program: one input, one output, no buffer mutation, only
   functional, non-random ATen ops.
3. Scores fixed val windows of the fixed context: cross-entropy computed here, in fp32,
   val_bpb = sum(nats) / (ln 2 * sum(UTF-8 bytes of the target tokens)), special tokens
   excluded, byte counts from the tokenizer's raw token bytes.
4. Probes causality (changing tokens after position t must not change logits at <= t)
   and batch independence (a row's logits must not depend on the other rows).
5. Prints ONE JSON object on stdout; the exit code is 0 only for a valid result.

With --wait it starts early (the runner starts it beside the training run): it imports
torch, loads the val windows, warms the loader (and with --warm-cuda the CUDA context), waits for a
line "go" on stdin before it opens the artifact. The run then waits only for steps 1-5.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import operator
import os
import re
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

EVAL_CONTEXT = 256  # fixed evaluation context length T (passed to training as AR_EVAL_CONTEXT)
# Fixed val windows scored per device kind, sized so evaluation stays within 5% of the default
# budget (60 s on CPU, 300 s on CUDA), prewarmed (bench/evaluation.py). On 2 CPU cores 32
# windows took 2.6-3.2 s, too close to 3 s; 24 (6,144 scored tokens, spread over the whole
# split) leave a margin. Results are only compared within one hardware fingerprint.
EVAL_WINDOWS = {"cpu": 24, "cuda": 160}
EVAL_BATCH = 16  # windows per forward pass (fixed: the probe reuses these shapes)
PROBE_SEED = 20_240_229  # the evaluator's own randomness, never the agent's
CAUSALITY_TOLERANCE = 1e-5  # at identical shapes an honest model is bitwise identical
MAX_ABS_LOGIT = 1e4
MAX_ARCHIVE_BYTES = 4 << 30
MAX_ENTRIES = 10_000

EXIT_OK, EXIT_INVALID_ARTIFACT, EXIT_INTEGRITY, EXIT_ERROR, EXIT_NOT_STARTED = 0, 3, 4, 5, 6


class InvalidArtifact(Exception):
    """The artifact is missing, malformed, or not a model the evaluator may run."""


class IntegrityFailure(Exception):
    """The model runs but breaks the rules of the metric (future tokens, other rows, bad logits)."""


# ---------------------------------------------------------------- archive checks

_ENTRY_PATTERNS = [
    re.compile(p)
    for p in (
        r"data/weights/weight_\d+",
        r"data/weights/model_weights_config\.json",
        r"data/constants/tensor_\d+",
        r"data/constants/model_constants_config\.json",
        r"models/model\.json",
        r"archive_format",
        r"archive_version",
        r"\.data/version",
        r"\.data/serialization_id",
        r"byteorder",
    )
]
_DROPPED_PREFIXES = ("data/sample_inputs/",)  # pickles, retried with weights_only=False: never load
_SYMPY_TOKEN = re.compile(
    r"\s*(?:(Symbol|Integer|Mul|Add|Mod|FloorDiv|CeilToInt|FloorToInt|Max|Min|positive|integer|True|False)|([su]\d+)|'([su]\d+)'|(\d+)|([()*+\-/,=]))"
)
# Ops the graph may call besides functional ATen ops: symbolic-size arithmetic and tuple access.
_ALLOWED_NON_ATEN_TARGETS = {
    "_operator.getitem",
    "_operator.mul",
    "_operator.add",
    "_operator.sub",
    "_operator.floordiv",
    "_operator.mod",
    "_operator.eq",
    "_operator.ne",
    "_operator.le",
    "_operator.lt",
    "_operator.ge",
    "_operator.gt",
}
_DENIED_ATEN = {
    "from_file",
    "_local_scalar_dense",
    "item",
    "save",
    "_print",
    "set_",
    "resize_",
    "_assert_async",
}


def _check_sympy(expr: str) -> None:
    """Sympy strings are eval'd by the loader: accept only symbols, integers and arithmetic.

    No powers (`**` makes a cheap string an endless computation), short integers, short strings.
    """
    if len(expr) > 300 or "**" in expr or re.search(r"\d{13,}", expr):
        raise InvalidArtifact(f"symbolic shape expression {expr[:80]!r} is not allowed")
    position = 0
    while position < len(expr):
        match = _SYMPY_TOKEN.match(expr, position)
        if not match or match.end() == position:
            raise InvalidArtifact(f"symbolic shape expression {expr[:80]!r} is not allowed")
        position = match.end()
        if expr[position:].strip() == "":
            break


def _walk(value: Any, visit) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            visit(key, item)
            _walk(item, visit)
    elif isinstance(value, list):
        for item in value:
            _walk(item, visit)


def _check_target(target: str) -> None:
    if target in _ALLOWED_NON_ATEN_TARGETS or target == "torch.ops.aten.sym_size.int":
        return
    parts = target.split(".")
    if len(parts) != 5 or parts[:3] != ["torch", "ops", "aten"]:
        raise InvalidArtifact(f"the graph calls {target!r}; only ATen operators are allowed")
    if parts[3] in _DENIED_ATEN or parts[3].endswith("_"):
        raise InvalidArtifact(
            f"the graph calls {target!r}, which is not allowed (I/O, in-place or data-dependent)"
        )


def _check_model_json(model: dict) -> dict:
    """Validate the serialized program and return a sanitized copy."""
    if model.get("guards_code"):
        raise InvalidArtifact(
            "the artifact carries guard code (executed at load); export it with torch.export.export"
        )
    model["guards_code"] = []
    graph = model.get("graph_module", {}).get("graph", {})
    if graph.get("custom_obj_values"):
        raise InvalidArtifact(
            "the artifact carries custom objects (pickled at load); remove them from the model"
        )
    for key in model.get("range_constraints", {}):
        if not re.fullmatch(r"[su]\d+", key):
            raise InvalidArtifact(f"range constraint on {key!r} is not allowed")

    def visit(key: str, item: Any) -> None:
        if key == "expr_str" and isinstance(item, str):
            _check_sympy(item)
        if key == "target" and isinstance(item, str):
            _check_target(item)
        if key == "use_pickle" and item:
            raise InvalidArtifact(
                "the artifact stores tensors as pickles; save with torch.export.save"
            )

    _walk(model, visit)
    for node in graph.get("nodes", []):
        node["metadata"] = {
            k: v for k, v in node.get("metadata", {}).items() if k in ("stack_trace",)
        }
    return model


def _check_tensor_config(config: dict, folder: str, names: set[str]) -> None:
    for entry in config.get("config", {}).values():
        if entry.get("use_pickle"):
            raise InvalidArtifact(
                "the artifact stores tensors as pickles; save with torch.export.save"
            )
        path = entry.get("path_name", "")
        if not re.fullmatch(r"(weight|tensor)_\d+", path) or f"{folder}/{path}" not in names:
            raise InvalidArtifact(f"tensor entry {path!r} is missing or not allowed")


def sanitized_archive(path: Path | io.BytesIO) -> io.BytesIO:
    """Read the .pt2 zip, allow only known entries, validate JSON, write a fresh archive in memory."""
    label = path.name if isinstance(path, Path) else "the archive"
    if isinstance(path, Path) and not path.exists():
        raise InvalidArtifact(
            f"no model artifact at {label}: train.py must save it to $AR_OUT_DIR/{label}"
        )
    if isinstance(path, Path) and (path.is_symlink() or not path.is_file()):
        raise InvalidArtifact(f"{label} is not a regular file")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidArtifact(
            f"{label} is not a torch.export archive ({exc}); save with torch.export.save"
        ) from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES or sum(i.file_size for i in infos) > MAX_ARCHIVE_BYTES:
            raise InvalidArtifact(f"{label} is too large ({len(infos)} entries)")
        prefixes = {i.filename.split("/", 1)[0] for i in infos}
        if len(prefixes) != 1:
            raise InvalidArtifact(
                f"{label} holds more than one archive folder: {sorted(prefixes)[:5]}"
            )
        prefix = prefixes.pop()
        kept: dict[str, bytes] = {}
        for info in infos:
            name = info.filename[len(prefix) + 1 :]
            if info.is_dir() or any(name.startswith(p) for p in _DROPPED_PREFIXES):
                continue
            if not any(p.fullmatch(name) for p in _ENTRY_PATTERNS):
                raise InvalidArtifact(
                    f"{label} contains {name!r}, which a model archive may not contain"
                )
            try:
                kept[name] = archive.read(info)
            except (zipfile.BadZipFile, OSError, EOFError, zlib_error()) as exc:
                raise InvalidArtifact(
                    f"{label} is truncated or corrupt ({exc}); re-run training"
                ) from exc
    if "models/model.json" not in kept:
        raise InvalidArtifact(f"{label} has no models/model.json: it is not a torch.export program")
    try:
        model = json.loads(kept["models/model.json"])
        for config_name, folder in (
            ("data/weights/model_weights_config.json", "data/weights"),
            ("data/constants/model_constants_config.json", "data/constants"),
        ):
            if config_name in kept:
                _check_tensor_config(json.loads(kept[config_name]), folder, set(kept))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise InvalidArtifact(f"{label} has malformed metadata ({exc})") from exc
    kept["models/model.json"] = json.dumps(_check_model_json(model)).encode()
    kept["data/sample_inputs/model.pt"] = b""  # the loader requires the entry; empty means "none"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as fresh:
        for name, data in kept.items():
            fresh.writestr(f"{prefix}/{name}", data)
    buffer.seek(0)
    return buffer


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error


def _random_op_is_inert(node) -> bool:
    """Attention and dropout carry the 'random' tag but are deterministic with p = 0 / train = False."""
    name = node.target._schema.name.split("::")[-1]
    arguments = {
        a.name: v for a, v in zip(node.target._schema.arguments, node.args, strict=False)
    } | dict(node.kwargs)
    if name in ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu"):
        return arguments.get("dropout_p", 0.0) == 0.0
    if name in ("dropout", "feature_dropout", "alpha_dropout"):
        return arguments.get("p") == 0.0 or arguments.get("train") is False
    return False


def load_program(path: Path | io.BytesIO):
    """Load the sanitized program and check its signature and every op it calls."""
    import torch

    label = path.name if isinstance(path, Path) else "the archive"

    buffer = sanitized_archive(path)
    try:
        program = torch.export.load(buffer)
    except Exception as exc:
        raise InvalidArtifact(
            f"torch.export could not load {label}: {type(exc).__name__}: {str(exc)[:300]}"
        ) from exc
    signature = program.graph_signature
    if len(signature.user_inputs) != 1 or len(signature.user_outputs) != 1:
        raise InvalidArtifact(
            f"the program takes {len(signature.user_inputs)} inputs and returns {len(signature.user_outputs)} outputs; "
            "it must map token ids [B, T] to logits [B, T, V]"
        )
    if signature.buffers_to_mutate or signature.user_inputs_to_mutate:
        raise InvalidArtifact(
            "the program mutates buffers or inputs; export a stateless model (model.eval(), no caches)"
        )
    for node in program.graph.nodes:
        if node.op == "call_module":
            raise InvalidArtifact(
                f"the program calls a submodule ({node.target}); export with torch.export.export"
            )
        if node.op != "call_function":
            continue
        target = node.target
        if isinstance(target, torch._ops.OpOverload):
            if target.namespace != "aten":
                raise InvalidArtifact(
                    f"the program calls {target}; only ATen operators are allowed"
                )
            if target._schema.is_mutable:
                raise InvalidArtifact(
                    f"the program calls {target}, which mutates its inputs or state"
                )
            if torch.Tag.nondeterministic_seeded in target.tags and not _random_op_is_inert(node):
                raise InvalidArtifact(
                    f"the program calls {target} with randomness on; the model must be deterministic"
                )
            if target._schema.name.split("::")[-1] in _DENIED_ATEN:
                raise InvalidArtifact(f"the program calls {target}, which is not allowed")
        elif target not in (
            operator.getitem,
            operator.mul,
            operator.add,
            operator.sub,
            operator.floordiv,
        ):
            raise InvalidArtifact(f"the program calls {target!r}; only ATen operators are allowed")
    return program


# ---------------------------------------------------------------- scoring


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    """val_bpb = nats / (ln 2 * bytes)."""
    return total_nats / (math.log(2) * total_bytes)


def val_windows(val_tokens: np.ndarray, context: int, windows: int) -> np.ndarray:
    """The fixed windows [N, T+1], spread evenly over the whole val split.

    Each window is T inputs and the T next tokens. When the split holds more windows than
    asked for, they start at even strides from its first to its last token, so every part of
    the split (every document, not only the first few) has its share; when it holds no more,
    they are all the consecutive windows. Targets never overlap.
    """
    available = (val_tokens.size - 1) // context
    if available < 1:
        raise RuntimeError(
            f"the val split has {val_tokens.size} tokens, fewer than one window of {context + 1}"
        )
    count = min(windows, available)
    if count == 1 or count == available:
        starts = [i * context for i in range(count)]
    else:
        stride = (val_tokens.size - context - 1) // (count - 1)  # >= context: count < available
        starts = [i * stride for i in range(count)]
    return np.stack([val_tokens[s : s + context + 1] for s in starts]).astype(np.int64)


def token_nats(logits, targets):
    """Per-position cross-entropy in nats, computed here in fp32: logsumexp - logit of the target."""
    import torch

    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _run(module, x, vocab_size: int):
    import torch

    with torch.inference_mode():
        out = module(x)
    if isinstance(out, (tuple, list)) and len(out) == 1:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise IntegrityFailure(f"the model returned {type(out).__name__}, not a logits tensor")
    expected = (x.size(0), x.size(1), vocab_size)
    if tuple(out.shape) != expected:
        raise IntegrityFailure(
            f"the model returned logits of shape {tuple(out.shape)}; expected [B, T, V] = {list(expected)}"
        )
    if not out.is_floating_point():
        raise IntegrityFailure(f"the model returned {out.dtype} logits; expected floating point")
    out = out.float()
    if not torch.isfinite(out).all():
        raise IntegrityFailure("the model returned NaN or infinite logits")
    if out.abs().max().item() > MAX_ABS_LOGIT:
        raise IntegrityFailure(
            f"the model returned logits larger than {MAX_ABS_LOGIT:g} in magnitude"
        )
    return out


class ValSet:
    """The fixed val windows and the byte count of every token, on the evaluation device."""

    def __init__(
        self, data_dir: Path, device: str, windows: int | None, load_to: str | None = None
    ) -> None:
        """Windows sized for ``device``; held on ``load_to`` (default: ``device``) until ``to``."""
        import torch

        meta = json.loads((data_dir / "tokenizer" / "tokenizer.json").read_text())
        self.vocab_size = int(meta["vocab_size"])
        self.token_bytes = torch.from_numpy(
            np.fromfile(data_dir / "tokenizer" / "token_bytes.bin", dtype="<i4").astype(np.int64)
        )
        val_tokens = np.fromfile(data_dir / "val" / "tokens.bin", dtype="<u2")
        count = windows or EVAL_WINDOWS["cuda" if device.startswith("cuda") else "cpu"]
        self.data = torch.from_numpy(val_windows(val_tokens, EVAL_CONTEXT, count))
        self.to(load_to or device)

    def to(self, device: str) -> ValSet:
        self.device = device
        self.token_bytes, self.data = self.token_bytes.to(device), self.data.to(device)
        self.inputs, self.targets = self.data[:, :-1], self.data[:, 1:]
        return self


def warm_up(device: str) -> None:
    """Do the one-time work of a fresh process before the artifact exists.

    The loader's modules are imported lazily by torch (the first load of a program costs a
    second more than the next); the CUDA context and its libraries start on first use.
    """
    import torch
    import torch._export.serde.serialize  # the program deserializer
    import torch.export.passes  # move_to_device_pass
    import torch.export.pt2_archive._package  # the archive reader

    x = torch.randn(64, 64, device=device)
    with torch.inference_mode():
        torch.logsumexp(x @ x, dim=-1).sum().item()  # matmul and reduction kernels, context

    # One trusted round trip through the whole loader (export, save, sanitise, load, check):
    # the lazy parts of torch.export (sympy, the schema, the op tables) load here, not later.
    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(8, 8)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.rms_norm(self.embed(idx), (8,))

    program = torch.export.export(
        Probe().eval(),
        (torch.zeros(2, 4, dtype=torch.long),),
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
    )
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    load_program(buffer)


def evaluate(
    artifact: Path,
    data_dir: Path,
    device: str = "cpu",
    windows: int | None = None,
    val_set: ValSet | None = None,
) -> dict:
    """Score the artifact on the fixed val windows; raise InvalidArtifact / IntegrityFailure."""
    from torch.export.passes import move_to_device_pass

    timings: dict[str, float] = {}
    started = time.perf_counter()
    val = (val_set or ValSet(data_dir, device, windows)).to(device)
    program = load_program(artifact)
    # Weights and the constants captured at export (a tensor made on the trainer's device)
    # move to this device: an artifact exported on a GPU scores on the CPU, and back.
    program = move_to_device_pass(program, device)
    module = program.module()
    timings["load_seconds"] = time.perf_counter() - started

    vocab_size, inputs, targets = val.vocab_size, val.inputs, val.targets
    total_nats, total_bytes, scored = 0.0, 0, 0
    batch_logits = []
    t = time.perf_counter()
    for start in range(0, inputs.size(0), EVAL_BATCH):
        x, y = inputs[start : start + EVAL_BATCH], targets[start : start + EVAL_BATCH]
        logits = _run(module, x, vocab_size)
        batch_logits.append(logits)
        nbytes = val.token_bytes[y]
        counted = nbytes > 0  # special tokens carry no bytes and are excluded
        total_nats += token_nats(logits, y)[counted].double().sum().item()
        total_bytes += int(nbytes.sum().item())
        scored += int(counted.sum().item())
    timings["score_seconds"] = time.perf_counter() - t

    t = time.perf_counter()
    causality = probe_causality(module, inputs, batch_logits, vocab_size)
    timings["probe_seconds"] = time.perf_counter() - t
    timings["total_seconds"] = time.perf_counter() - started
    return {
        "val_bpb": bits_per_byte(total_nats, total_bytes),
        "val_loss_nats": total_nats / scored,
        "scored_tokens": scored,
        "scored_bytes": total_bytes,
        "windows": int(inputs.size(0)),
        "context": EVAL_CONTEXT,
        "vocab_size": vocab_size,
        "causality": causality,
        **{k: round(v, 3) for k, v in timings.items()},
    }


def probe_causality(module, inputs, batch_logits, vocab_size: int) -> dict:
    """Causality and batch independence, one probe pass per scoring batch (at least two).

    Pass j re-runs scoring batch j (cycled when there is only one) at the scoring shape, so
    an honest model gives bitwise-identical logits. In each pass the rows of one parity are
    *checked*: the tokens after a random position t are replaced by noise, and the logits at
    <= t must not move. The rows of the other parity are replaced by noise entirely, so a
    checked row whose logits move either read its own future or read another row (where windows
    are consecutive, the next row is this row's future). Parity alternates from pass to
    pass, so both halves of a batch are checked. A failing pass is re-run once with the
    other rows untouched, to say which of the two rules the model broke.
    """
    import torch

    generator = torch.Generator().manual_seed(PROBE_SEED)
    T = inputs.size(1)
    worst = 0.0
    probes = 0
    passes = max(2, len(batch_logits))
    for j in range(passes):
        index = j % len(batch_logits)
        reference = batch_logits[index]
        x = inputs[index * EVAL_BATCH : index * EVAL_BATCH + reference.size(0)]
        rows = torch.arange(x.size(0), device=x.device)
        checked = rows % 2 == j % 2
        cut = torch.randint(0, T - 1, (x.size(0),), generator=generator).to(x.device)
        cut = torch.where(checked, cut, torch.full_like(cut, -1))  # -1: the whole row is noise
        noise = torch.randint(0, vocab_size, x.shape, generator=generator).to(x.device)
        keep = torch.arange(T, device=x.device)[None, :] <= cut[:, None]
        probed = _run(module, torch.where(keep, x, noise), vocab_size)
        difference = (probed - reference).abs().amax(dim=-1)  # [B, T]
        leak = difference[keep].max().item() if bool(keep.any()) else 0.0
        worst = max(worst, leak)
        probes += int(checked.sum().item())
        if leak > CAUSALITY_TOLERANCE:
            # Which rule? The same cuts on the checked rows, the other rows left as they were.
            alone = keep | ~checked[:, None]
            again = _run(module, torch.where(alone, x, noise), vocab_size)
            own = (again - reference).abs().amax(dim=-1)
            if own[keep].max().item() > CAUSALITY_TOLERANCE:
                row = int((own * keep).amax(dim=1).argmax().item())
                raise IntegrityFailure(
                    f"causality probe failed: changing tokens after position {int(cut[row])} changed the logits at or "
                    f"before it by {own[keep].max().item():.3g} (tolerance {CAUSALITY_TOLERANCE:g}); attention must be causal"
                )
            raise IntegrityFailure(
                f"batch independence failed: changing the other rows of a batch changed a row's logits by {leak:.3g}; "
                "each sequence must be scored on its own"
            )
    return {
        "probes": probes,
        "passes": passes,
        "max_leak": worst,
        "tolerance": CAUSALITY_TOLERANCE,
    }


def file_hashes(data_dir: Path) -> dict[str, str]:
    """sha256 of the evaluator itself, the tokenizer and the val split: stored with every run."""
    paths = {
        "evaluator": Path(__file__).resolve(),
        "tokenizer": data_dir / "tokenizer" / "tokenizer.tiktoken",
        "token_bytes": data_dir / "tokenizer" / "token_bytes.bin",
        "val": data_dir / "val" / "tokens.bin",
    }
    return {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in paths.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score a model artifact: prints one JSON object.")
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True, help="holds tokenizer/ and val/")
    parser.add_argument("--device", default=os.environ.get("AR_DEVICE", "cpu"))
    parser.add_argument("--windows", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--wait",
        action="store_true",
        help="warm up first, then read a line 'go' on stdin before opening the artifact",
    )
    parser.add_argument(
        "--warm-cuda",
        action="store_true",
        help="with --wait: start CUDA during the warm-up too (only where the GPU is shared)",
    )
    args = parser.parse_args(argv)
    report: dict[str, Any] = {}
    try:
        val_set = None
        if args.wait:
            began = time.perf_counter()
            # CUDA starts now only when the runner says the GPU may hold two contexts (its
            # compute mode is Default): in an exclusive mode the training must get it first.
            warm_device = args.device if args.warm_cuda or args.device == "cpu" else "cpu"
            val_set = ValSet(args.data_dir, args.device, args.windows, load_to=warm_device)
            warm_up(warm_device)
            warm = time.perf_counter() - began
            print(f"evaluator warm in {warm:.2f} s, waiting for 'go'", file=sys.stderr, flush=True)
            if sys.stdin.readline().strip() != "go":
                report.update(
                    status="not_started", reason="stdin closed without 'go': nothing to score"
                )
                print(json.dumps(report), flush=True)
                return EXIT_NOT_STARTED
            report["warmup_seconds"] = round(warm, 3)
        report["hashes"] = file_hashes(args.data_dir)
        report.update(
            evaluate(args.artifact, args.data_dir, args.device, args.windows, val_set=val_set)
        )
        report["status"] = "ok"
        code = EXIT_OK
    except InvalidArtifact as exc:
        report.update(status="invalid_artifact", reason=str(exc))
        code = EXIT_INVALID_ARTIFACT
    except IntegrityFailure as exc:
        report.update(status="integrity_fail", reason=str(exc))
        code = EXIT_INTEGRITY
    except Exception as exc:
        report.update(
            status="error", reason=f"the evaluator failed: {type(exc).__name__}: {str(exc)[:400]}"
        )
        code = EXIT_ERROR
    print(json.dumps(report), flush=True)
    return code


if __name__ == "__main__":
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)  # the report is out; tearing torch down would cost the run ~0.8 s more
