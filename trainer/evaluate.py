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
   excluded, byte counts from the tokenizer's raw token bytes. The windows sit in the rows
   of equal batches (batch_rows) by a secret random permutation drawn for this run.
4. Probes causality (changing tokens after position t must not change logits at <= t)
   and batch independence (a row's logits must not depend on the other rows or on its row).
5. With --holdout only (the runner's argument, for leaderboard entries): scores the sealed
   holdout split the same way, in this same process, after the probes (see "The holdout").
6. Writes ONE JSON report: on stdout, or with --report-fd N only on fd N (stdout then goes
   to stderr, the log). The exit code is 0 only for status ok.

The probe, and how strong it is. Everything random is drawn from os.urandom in every run (no
seed in this file or anywhere an agent can read): the scoring layout, and for every probe
pass a second, independent layout (each probed window in another row than when it was
scored, beside other windows when there are more than one batch's worth, plus one decoy row
of noise), the windows probed (a uniform sample), and one cut per window drawn uniformly from
0..T-2. A probed window keeps its tokens up to the cut and gets noise after it (each noise
token differs from the real one); its logits at the kept positions must equal the scoring
logits (an honest model is bitwise identical there: rows are independent, the shape is the
same; measured on the baseline GPT on the CPU: max difference 0 when a window moves to any
row, beside any other windows, or to another batch size).
  A model "reads the future" at a position when its logits there change once the tokens
after it change. Reading the next token (the target itself) is the most profitable cheat and
the hardest to see: only a cut exactly at that position sees it. Let f be the fraction of
the N x (T-1) positions at which a model reads the future, chosen by ANY rule of its own
(fixed positions, a hash of the prefix, the batch, the row): the n cuts are uniform and
independent of that rule, so the model survives all of them with probability at most
(1 - f)^n (sampling windows without replacement within a pass only lowers it). A model that
behaves differently when probed (it can see noise or a decoy row) gains nothing: the kept
positions are compared with what it returned while being scored.
  Cuts per run: PROBE_ROWS rows, in passes of batch_rows(N) rows with one decoy each.
  - CPU default, 24 windows: 2 scoring batches of 12, 4 probe passes, n = 44 cuts: caught
    with >= 95% for f >= 6.6%, >= 99% for f >= 9.9%. Reading the next token at a fraction f
    of positions lowers val_bpb by about f * val_bpb (f * 1.88 ~ 0.12 and 0.19 for the 60 s
    baseline) if the positions are average ones, more if the rule picks hard ones: the CPU
    bound is what 5% of the budget buys (one forward row costs as much as one scored window).
    Every fresh evaluation (a confirmation run, a re-run) draws new cuts: k evaluations of the
    same cheat survive with (1 - f)^(k n).
  - CUDA, 160 windows of 2048 tokens (the CUDA recipe's context; fewer where the val split is
    shorter, e.g. 30 on the bundled corpus): 10 scoring batches of 16, 80 probe passes,
    n = 1200 cuts: >= 95% for f >= 0.25%, >= 99% for f >= 0.38%, i.e. a hidden gain of at
    most ~0.003-0.004 val_bpb, about the GPU's seed-to-seed sd. (At 256 tokens it was 2560
    probe rows; a row of 2048 costs ~8x more, so the rows were halved to keep the cost.)
  - The red-team lab (4 windows): 12 passes of 4 rows, n = 36: >= 99% for f >= 12%.
  Cost (2-core CPU, baseline GPT): one forward row ~12 ms unloaded; a prewarmed run scored
  24 rows and probed 24 before (~2.1 s in all, 3.5% of 60 s); it now probes 48 (~2.8 s, see
  bench/evaluation.py). On an H200 a row of 256 cost ~0.3 ms (2560 rows ~1 s); a row of 2048
  is estimated at ~3 ms, 1280 rows ~4 s of the 9 s that 3% of 300 s allows (not measured yet:
  bench/gpu_check.py reports it).

What it says carries no data back: reasons about running the model are fixed texts (no
exception message, value, position, leak size or returned shape); an exception while the
model runs is "the model raised an error while scoring ...". Warnings and library logging
are silenced while the artifact is loaded, scored and probed, and node metadata (stack
traces) is dropped from the program, so nothing model- or data-dependent reaches the log.
The report holds only: status (and reason), hashes, val_bpb (full precision: the runner
rounds what it publishes), windows, context, vocab_size, causality {probes: cuts checked,
passes, passed}, load/score/probe/total_seconds (and warmup_seconds with --wait), and with
--holdout the sealed "holdout" object (read by the runner only).

The holdout. prepare writes a third split (holdout/), drawn from the same secret keyed hash as
val, that training never sees and a normal evaluation does not mount. With --holdout the runner
mounts it and this process scores as many windows of it as of val (EVAL_WINDOWS), spread the
same way, at the same batch shape, in a fresh secret layout, once val is scored and probed. It
is not probed again: the program is a pure function of its input (no state, no randomness,
checked above), the probes showed on val that its logits at a position read nothing after it
and nothing of other rows, and val and holdout documents are alike to the model (both unseen,
split by a secret hash), so it cannot tell which of the two it scores. The holdout never changes
the run's status: it is reported apart ("holdout": {status, bpb at full precision, windows,
seconds}, or status "unavailable" / "failed" with a fixed reason), the runner keeps it out of
everything the agent reads, and the run's timings (total_seconds) do not include it.

With --wait it starts early (the runner starts it beside the training run): it imports
torch, loads the val windows, warms the loader (and with --warm-cuda the CUDA context), waits for a
line "go" on stdin before it opens the artifact. The run then waits only for steps 1-5.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import operator
import os
import re
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

EVAL_CONTEXT = 256  # the CPU's fixed evaluation context length T (training gets AR_EVAL_CONTEXT)
# The context per device kind: the CUDA recipe trains at 2048, and is scored at that length
# (the runner passes the target's context with --context; these are the defaults without it).
EVAL_CONTEXTS = {"cpu": EVAL_CONTEXT, "cuda": 2048}
MIN_CONTEXT, MAX_CONTEXT = 16, 16384
# Fixed val windows scored per device kind, sized so evaluation stays within 5% of the default
# budget (60 s on CPU, 300 s on CUDA), prewarmed (bench/evaluation.py). On 2 CPU cores 32
# windows took 2.6-3.2 s, too close to 3 s; 24 (6,144 scored tokens, spread over the whole
# split) leave a margin. Results are only compared within one hardware fingerprint.
EVAL_WINDOWS = {"cpu": 24, "cuda": 160}
EVAL_BATCH = 16  # at most this many windows per forward pass (see batch_rows)
# Rows the causality/batch probe re-runs per evaluation, per device kind (one row = one cut,
# but for one decoy row per pass). The bound and the cost are in the module docstring.
PROBE_ROWS = {"cpu": 48, "cuda": 1280}


def device_kind(device: str) -> str:
    """'cuda' for any CUDA device, else 'cpu': the key of the per-device tables above."""
    return "cuda" if device.startswith("cuda") else "cpu"


CAUSALITY_TOLERANCE = 1e-5  # at identical shapes an honest model is bitwise identical
MAX_ABS_LOGIT = 1e4
MAX_ARCHIVE_BYTES = 4 << 30
MAX_ENTRIES = 10_000

EXIT_OK, EXIT_INVALID_ARTIFACT, EXIT_INTEGRITY, EXIT_ERROR, EXIT_NOT_STARTED = 0, 3, 4, 5, 6


class InvalidArtifact(Exception):
    """The artifact is missing, malformed, or not a model the evaluator may run."""


class IntegrityFailure(Exception):
    """The model runs but breaks the rules of the metric (future tokens, other rows, bad logits)."""


class EvaluatorFailed(Exception):
    """The evaluator itself failed after the val windows were in play: reported without its text."""


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
# Uninitialised allocations hand the program whatever the allocator last freed: the evaluator's
# own buffers (val windows, scoring temporaries) or a stash the program left in an earlier call,
# i.e. state carried from scoring to probing. A model has no use for them (zeros/full do).
_UNINITIALISED = ("empty", "new_empty", "_empty")


def _denied_aten(name: str) -> bool:
    return name in _DENIED_ATEN or name.startswith(_UNINITIALISED)


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
        raise InvalidArtifact(
            f"the graph calls {str(target)[:80]!r}; only ATen operators are allowed"
        )
    if _denied_aten(parts[3]) or parts[3].endswith("_"):
        raise InvalidArtifact(
            f"the graph calls {str(target)[:80]!r}, which is not allowed (I/O, in-place or data-dependent)"
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
            raise InvalidArtifact(f"range constraint on {str(key)[:60]!r} is not allowed")

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
        # No text of the agent's survives into the program: torch echoes node metadata (stack
        # traces, module paths) in its warnings and errors.
        node["metadata"] = {}
    _check_names(model)
    return model


# Every name torch may write into the Python code it generates for the program (torch.fx
# formats a non-identifier attribute name into `getattr(self, "NAME")` without escaping it:
# a parameter named `c") if exec(...) else getattr(self, "c` runs code at the first forward,
# inside the evaluator, which holds the report channel). So every key and every string value
# of the program's JSON must be a plain dotted identifier, except the few fields below, each
# checked by its own rule.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*")
_MAX_NAME = 256
_TORCH_VERSION = re.compile(r"[0-9A-Za-z.+_-]{1,64}")
_STRING_ARGUMENT = re.compile(r"[A-Za-z0-9_]{0,64}")  # e.g. gelu's approximate="tanh"


def _is_name(text: Any) -> bool:
    return isinstance(text, str) and len(text) <= _MAX_NAME and bool(_NAME.fullmatch(text))


def _refuse_name(where: str, text: str) -> InvalidArtifact:
    return InvalidArtifact(
        f"the artifact holds the name {text[:60]!r} in {where}; names must be plain identifiers "
        "(letters, digits, '_' and '.'): export the model with torch.export.export and save it "
        "with torch.export.save, unedited"
    )


def _check_treespec(text: str, where: str) -> None:
    """The input/output tree specs: JSON of known shape whose type names and keys are plain names."""
    try:
        spec = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidArtifact(f"the artifact's {where} is not a valid tree spec") from exc

    def check(node: Any, depth: int) -> None:
        if depth > 32:
            raise InvalidArtifact(f"the artifact's {where} nests too deep")
        if isinstance(node, list):
            for item in node:
                check(item, depth + 1)
        elif isinstance(node, dict):
            for key, item in node.items():
                if key not in ("type", "context", "children_spec"):
                    raise _refuse_name(where, key)
                if key == "type" and item is not None and not _is_name(item):
                    raise _refuse_name(where, str(item))
                if key == "context" and isinstance(item, str):
                    try:
                        context = json.loads(item)
                    except (json.JSONDecodeError, RecursionError) as exc:
                        raise InvalidArtifact(
                            f"the artifact's {where} is not a valid tree spec"
                        ) from exc
                    for value in context if isinstance(context, list) else [context]:
                        if isinstance(value, str) and not _is_name(value):
                            raise _refuse_name(where, value)
                        if not isinstance(value, str | int | type(None)):
                            raise InvalidArtifact(
                                f"the artifact's {where} is not a valid tree spec"
                            )
                elif key == "children_spec":
                    check(item, depth + 1)
        elif not isinstance(node, int | type(None)):
            raise InvalidArtifact(f"the artifact's {where} is not a valid tree spec")

    check(spec, 0)


def _check_names(value: Any, field: str = "", depth: int = 0) -> None:
    """Walk the program's JSON: every key and string value a plain name, or checked by its field's rule."""
    if depth > 64:
        raise InvalidArtifact("the artifact's program nests too deep")
    if isinstance(value, dict):
        for key, item in value.items():
            if not _is_name(key):
                raise _refuse_name("a key of the program", key)
            _check_names(item, key, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_names(item, field, depth + 1)
    elif isinstance(value, str):
        if field in ("expr_str", "target"):
            return  # checked by _check_sympy and _check_target
        if field in ("in_spec", "out_spec"):
            _check_treespec(value, field)
        elif field == "fqn":
            if value and not _is_name(value):
                raise _refuse_name("a module path", value)
        elif field == "torch_version":
            if not _TORCH_VERSION.fullmatch(value):
                raise _refuse_name("torch_version", value)
        elif field == "as_string":
            if not _STRING_ARGUMENT.fullmatch(value):
                raise _refuse_name("a string argument", value)
        elif not _is_name(value):
            raise _refuse_name(f"field {str(field)[:60]!r}", value)


def _check_tensor_config(config: dict, folder: str, names: set[str]) -> None:
    for key in config.get("config", {}):
        if not _is_name(key):  # the tensor's name, as the program refers to it
            raise _refuse_name("the tensor configuration", key)
    _check_names(config)
    for entry in config.get("config", {}).values():
        if entry.get("use_pickle"):
            raise InvalidArtifact(
                "the artifact stores tensors as pickles; save with torch.export.save"
            )
        path = entry.get("path_name", "")
        if not re.fullmatch(r"(weight|tensor)_\d+", path) or f"{folder}/{path}" not in names:
            raise InvalidArtifact(f"tensor entry {str(path)[:80]!r} is missing or not allowed")


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
                    f"{label} contains {str(name)[:80]!r}, which a model archive may not contain"
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
            if _denied_aten(target._schema.name.split("::")[-1]):
                raise InvalidArtifact(f"the program calls {target}, which is not allowed")
        elif target not in (
            operator.getitem,
            operator.mul,
            operator.add,
            operator.sub,
            operator.floordiv,
        ):
            raise InvalidArtifact(
                f"the program calls {str(target)[:80]!r}; only ATen operators are allowed"
            )
    return program


# ---------------------------------------------------------------- scoring


class ModelRaised(InvalidArtifact):
    """Running the model on the val windows raised: reported as a fixed text, never the message."""


MODEL_RAISED = (
    "the model raised an error while scoring the val windows; export a model that maps any batch "
    "of token ids [B, T] (long integers below V) to logits [B, T, V], and run the exported "
    "program on such a batch yourself to see the error"
)
MODEL_OUT_OF_MEMORY = (
    "the model ran out of memory while scoring the val windows; make it smaller, or make its "
    "memory grow less with the batch"
)
CAUSALITY_FAILED = (
    "causality probe failed: changing the tokens after a position changed the model's logits at or "
    "before that position; attention must be causal (the logits at a position may read the tokens up to it only)"
)
BATCH_FAILED = (
    "batch independence failed: a window's logits changed when it was run in another row, beside "
    "other windows; each sequence must be scored on its own (no reads across the batch, no "
    "dependence on the row)"
)


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


# ---------------------------------------------------------------- the evaluator's own randomness


def secure_below(high: int, count: int) -> np.ndarray:
    """``count`` integers uniform in [0, high) from the OS's CSPRNG (os.urandom), as int64.

    Never a seed or a generator state an agent could read or reconstruct: every draw is fresh
    in every run. 64-bit draws reduced modulo ``high``: the bias is below high / 2**64.
    """
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    raw = np.frombuffer(os.urandom(8 * count), dtype=np.uint64)
    return (raw % np.uint64(high)).astype(np.int64)


def secure_permutation(n: int) -> np.ndarray:
    """A uniformly random permutation of range(n) from the OS's CSPRNG (argsort of 64-bit keys)."""
    return np.argsort(np.frombuffer(os.urandom(8 * n), dtype=np.uint64), kind="stable")


def batch_rows(windows: int) -> int:
    """Rows of every forward pass: the windows split into equal batches of at most EVAL_BATCH.

    Scoring and probing run at this one shape, so an honest model gives bitwise-identical
    logits for a window whatever row or batch it sits in (same kernels, independent rows).
    """
    batches = -(-windows // EVAL_BATCH)
    return -(-windows // batches)


def probe_passes(rows: int, device: str) -> int:
    """Probe forward passes: PROBE_ROWS of the device kind, in batches of ``rows``."""
    return max(2, -(-PROBE_ROWS[device_kind(device)] // rows))


def _noise(shape: tuple[int, int], vocab_size: int, device) -> Any:
    import torch

    return torch.from_numpy(secure_below(vocab_size, shape[0] * shape[1]).reshape(shape)).to(device)


def _run(module, x, vocab_size: int):
    """One forward pass with the checks every result must pass; fixed texts only.

    Nothing derived from running the model (an exception's message, a returned shape, a value)
    goes into a reason: it could carry val tokens back to the agent.
    """
    import torch

    try:
        with torch.inference_mode():
            out = module(x)
    except (MemoryError, torch.OutOfMemoryError):
        raise ModelRaised(MODEL_OUT_OF_MEMORY) from None
    except Exception:
        raise ModelRaised(MODEL_RAISED) from None
    if isinstance(out, (tuple, list)) and len(out) == 1:
        out = out[0]
    expected = (x.size(0), x.size(1), vocab_size)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        raise IntegrityFailure(
            f"the model did not return one logits tensor of shape [B, T, V] = {list(expected)}"
        )
    if not out.is_floating_point():
        raise IntegrityFailure("the model returned logits that are not floating point")
    out = out.float()
    peak = out.abs().amax().item()  # NaN and inf propagate: one pass checks all three
    if not math.isfinite(peak):
        raise IntegrityFailure("the model returned NaN or infinite logits")
    if peak > MAX_ABS_LOGIT:
        raise IntegrityFailure(
            f"the model returned logits larger than {MAX_ABS_LOGIT:g} in magnitude"
        )
    return out


class ValSet:
    """The fixed windows of a split (val, or the holdout) and the byte count of every token."""

    def __init__(
        self,
        data_dir: Path,
        device: str,
        windows: int | None,
        load_to: str | None = None,
        split: str = "val",
        context: int | None = None,
    ) -> None:
        """Windows of ``split`` sized for ``device``, ``context`` tokens long (default: the
        device's); held on ``load_to`` (default: ``device``) until ``to``."""
        import torch

        self.context = context or EVAL_CONTEXTS[device_kind(device)]

        meta = json.loads((data_dir / "tokenizer" / "tokenizer.json").read_text())
        self.vocab_size = int(meta["vocab_size"])
        self.token_bytes = torch.from_numpy(
            np.fromfile(data_dir / "tokenizer" / "token_bytes.bin", dtype="<i4").astype(np.int64)
        )
        val_tokens = np.fromfile(data_dir / split / "tokens.bin", dtype="<u2")
        count = windows or EVAL_WINDOWS[device_kind(device)]
        self.data = torch.from_numpy(val_windows(val_tokens, self.context, count))
        self.to(load_to or device)

    def to(self, device: str) -> ValSet:
        self.device = device
        self.token_bytes, self.data = self.token_bytes.to(device), self.data.to(device)
        self.inputs, self.targets = self.data[:, :-1], self.data[:, 1:]
        return self


@contextlib.contextmanager
def silenced():
    """No warnings and no library logging while the artifact is loaded, scored and probed.

    torch echoes text from the program (node names, stack traces) and from failed ops (values)
    in warnings and logs; none of it may reach the log, which holds nothing model- or
    data-dependent. (C++ logging is turned down by TORCH_CPP_LOG_LEVEL in main.)
    """
    previous = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.CRITICAL)
        try:
            yield
        finally:
            logging.disable(previous)


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
    holdout: ValSet | str | None = None,
    context: int | None = None,
) -> dict:
    """Score the artifact on the fixed val windows; raise InvalidArtifact / IntegrityFailure.

    Returns only what the runner needs (the report, in the module docstring): val_bpb at full
    precision, the shape of the evaluation, the probe summary and timings. With ``holdout``
    (its windows, or why there are none) the program, once scored and probed on val, also
    scores the holdout: the sealed "holdout" entry (``score_holdout``), which never raises.
    """
    from torch.export.passes import move_to_device_pass

    timings: dict[str, float] = {}
    started = time.perf_counter()
    val = (val_set or ValSet(data_dir, device, windows, context=context)).to(device)
    with silenced():
        program = load_program(artifact)
        # Weights and the constants captured at export (a tensor made on the trainer's device)
        # move to this device: an artifact exported on a GPU scores on the CPU, and back.
        program = move_to_device_pass(program, device)
        module = program.module()
        timings["load_seconds"] = time.perf_counter() - started
        # From here on the val windows are in play: no text from running the model or from an
        # exception escapes (ModelRaised and the checks carry fixed texts only).
        try:
            t = time.perf_counter()
            try:
                scoring = score(module, val)
            except ModelRaised as exc:
                raise explain_error(module, val) or exc from None
            timings["score_seconds"] = time.perf_counter() - t
            t = time.perf_counter()
            causality = probe_causality(module, val, scoring, probe_passes(scoring.rows, device))
            timings["probe_seconds"] = time.perf_counter() - t
        except (InvalidArtifact, IntegrityFailure):
            raise
        except Exception as exc:
            raise EvaluatorFailed(
                f"the evaluator failed while scoring ({type(exc).__name__})"
            ) from None
        timings["total_seconds"] = time.perf_counter() - started  # the holdout is not in it
        report: dict[str, Any] = {
            "val_bpb": scoring.val_bpb,
            "windows": int(val.inputs.size(0)),
            "context": int(val.inputs.size(1)),
            "vocab_size": val.vocab_size,
            "causality": causality,
            **{k: round(v, 3) for k, v in timings.items()},
        }
        del scoring  # its logits: the holdout's take their place
        if holdout is not None:
            report["holdout"] = score_holdout(module, holdout, device)
    return report


HOLDOUT = "holdout"  # the sealed split's folder under the data directory
HOLDOUT_MISSING = (
    "not available: the data folder holds no holdout split (prepared before it existed); "
    "re-run `autoresearch-mcp prepare`, which adds it and keeps val and the tokenizer as they are"
)
HOLDOUT_TOO_SHORT = "not available: the holdout split is shorter than one evaluation window; prepare a larger corpus"


def load_holdout(
    data_dir: Path,
    device: str,
    windows: int | None,
    load_to: str | None = None,
    context: int | None = None,
) -> ValSet | str:
    """The holdout's windows (as many as val's, spread alike), or a fixed text saying why there are none."""
    if not (data_dir / HOLDOUT / "tokens.bin").is_file():
        return HOLDOUT_MISSING
    try:
        return ValSet(data_dir, device, windows, load_to=load_to, split=HOLDOUT, context=context)
    except RuntimeError:
        return HOLDOUT_TOO_SHORT


def score_holdout(module, holdout: ValSet | str, device: str) -> dict[str, Any]:
    """The sealed holdout entry: the program's bits per byte on the holdout windows, or why not.

    Scored like val (fresh secret layout, the same batch shape and per-pass checks) but not
    probed again (see the module docstring). Never raises: a failure here is reported in the
    entry with a fixed text and leaves the run's status to val.
    """
    if isinstance(holdout, str):
        return {"status": "unavailable", "reason": holdout}
    began = time.perf_counter()
    try:
        scoring = score(module, holdout.to(device))
    except (InvalidArtifact, IntegrityFailure) as exc:  # fixed texts (see _run)
        return {"status": "failed", "reason": str(exc)}
    except Exception as exc:
        return {
            "status": "failed",
            "reason": f"the evaluator failed while scoring the holdout ({type(exc).__name__})",
        }
    return {
        "status": "ok",
        "value": scoring.val_bpb,
        "windows": int(holdout.inputs.size(0)),
        "seconds": round(time.perf_counter() - began, 3),
    }


def explain_error(module, val: ValSet) -> InvalidArtifact | None:
    """The model raised on the val windows: does it raise on a batch of zeros of the same shape?

    If so, that error's text comes from the artifact and the zeros only, never from val data,
    so it may be shown (a static batch size, a wrong dtype...); if not, the fixed text stands.
    """
    import torch

    rows, length = batch_rows(val.inputs.size(0)), val.inputs.size(1)
    try:
        with torch.inference_mode():
            module(torch.zeros(rows, length, dtype=torch.long, device=val.inputs.device))
    except Exception as exc:
        return InvalidArtifact(
            f"the model raised an error on a batch of zeros [{rows}, {length}] (no val data "
            f"involved): {type(exc).__name__}: {str(exc)[:300]}"
        )
    return None


@dataclasses.dataclass
class Scoring:
    """What scoring leaves for the probe: the logits of every window and where it sat."""

    val_bpb: float
    rows: int  # rows of every forward pass
    logits: Any  # [N, T, V] fp32, by window
    batches: list[Any]  # the scoring batches' inputs [rows, T], pad rows included
    slots: np.ndarray  # [batches, rows]: the window in each row, -1 for a pad row of noise


def score(module, val: ValSet) -> Scoring:
    """Cross-entropy of every window, with the windows placed in batch rows at random.

    The layout (which window sits in which row of which batch) is a fresh secret permutation;
    rows beyond the windows (when they do not split into equal batches) are noise and not
    scored. val_bpb is summed by window in a fixed order, so it does not depend on the layout.
    """
    import torch

    inputs, targets, vocab_size = val.inputs, val.targets, val.vocab_size
    count, length = inputs.shape
    rows = batch_rows(count)
    order = secure_permutation(-(-count // rows) * rows)
    slots = np.where(order < count, order, -1).reshape(-1, rows)
    logits = torch.empty(count, length, vocab_size, dtype=torch.float32, device=inputs.device)
    batches = []
    for slot in slots:
        real = torch.from_numpy(np.flatnonzero(slot >= 0)).to(inputs.device)
        window = torch.from_numpy(slot[slot >= 0]).to(inputs.device)
        x = _noise((rows, length), vocab_size, inputs.device)
        x[real] = inputs[window]
        logits[window] = _run(module, x, vocab_size)[real]
        batches.append(x)
    total_nats, total_bytes = 0.0, 0
    for start in range(0, count, rows):  # by window, in window order
        y = targets[start : start + rows]
        nbytes = val.token_bytes[y]
        counted = nbytes > 0  # special tokens carry no bytes and are excluded
        total_nats += token_nats(logits[start : start + rows], y)[counted].double().sum().item()
        total_bytes += int(nbytes.sum().item())
    return Scoring(bits_per_byte(total_nats, total_bytes), rows, logits, batches, slots)


def probe_causality(module, val: ValSet, scoring: Scoring, passes: int) -> dict:
    """Causality and batch independence: ``passes`` forward passes at the scoring shape.

    Each pass holds one decoy row (noise throughout; none where a pass has one row) and a
    random sample of windows, each in another row than when it was scored (and, with more
    windows than rows, beside other windows). Each window's row keeps its tokens up to a cut
    drawn uniformly from 0..T-2 and gets noise after it, every noise token different from the
    real one. The logits at the kept positions must equal the scoring logits to
    CAUSALITY_TOLERANCE (an honest model is bitwise identical there): a move means the model
    read its own future, another row, or its row index. All draws come from the OS (secure_*).
    A failing row is re-run in its own scoring batch with only its own future changed, to say
    which rule the model broke; the reason is a fixed text (no position, no magnitude).
    """
    import torch

    inputs, vocab_size = val.inputs, val.vocab_size
    count, length = inputs.shape
    rows, device = scoring.rows, inputs.device
    scored_row = np.empty(count, dtype=np.int64)
    for slot in scoring.slots:
        scored_row[slot[slot >= 0]] = np.flatnonzero(slot >= 0)
    decoys = 1 if rows > 1 else 0
    positions = torch.arange(length, device=device)
    cuts_checked = 0
    for _ in range(passes):
        chosen = secure_permutation(count)[: min(rows - decoys, count)]
        content = np.concatenate([chosen, np.full(rows - chosen.size, -1)])
        for _attempt in range(100):  # a window never sits in the row it was scored in
            arranged = content[secure_permutation(rows)]
            placed = arranged >= 0
            if rows == 1 or not (scored_row[arranged[placed]] == np.flatnonzero(placed)).any():
                break
        checked = torch.from_numpy(np.flatnonzero(placed)).to(device)
        window = torch.from_numpy(arranged[placed]).to(device)
        cut = torch.from_numpy(secure_below(length - 1, window.numel())).to(device)
        original = inputs[window]
        shift = 1 + torch.from_numpy(
            secure_below(vocab_size - 1, original.numel()).reshape(original.shape)
        ).to(device)
        keep = positions[None, :] <= cut[:, None]
        x = _noise((rows, length), vocab_size, device)
        x[checked] = torch.where(keep, original, (original + shift) % vocab_size)
        probed = _run(module, x, vocab_size)
        moved = probed[checked].sub_(scoring.logits[window]).abs_().amax(dim=-1)  # [k, T]
        moved = torch.where(keep, moved, torch.zeros_like(moved)).amax(dim=-1)  # [k]
        cuts_checked += window.numel()
        if bool((moved > CAUSALITY_TOLERANCE).any()):
            first = int(torch.nonzero(moved > CAUSALITY_TOLERANCE)[0, 0])
            _raise_broken_rule(
                module, val, scoring, int(window[first]), x[checked[first]], keep[first]
            )
    return {"probes": cuts_checked, "passes": passes, "passed": True}


def _raise_broken_rule(module, val: ValSet, scoring: Scoring, window: int, row, keep) -> None:
    """Which rule a failing window broke: re-run its scoring batch with only its future changed."""
    batch, position = (int(i[0]) for i in np.nonzero(scoring.slots == window))
    x = scoring.batches[batch].clone()
    x[position] = row
    again = _run(module, x, val.vocab_size)
    moved = (again[position] - scoring.logits[window]).abs().amax(dim=-1)[keep]
    if bool((moved > CAUSALITY_TOLERANCE).any()):
        raise IntegrityFailure(CAUSALITY_FAILED)
    raise IntegrityFailure(BATCH_FAILED)


def file_hashes(data_dir: Path, holdout: bool = False) -> dict[str, str]:
    """sha256 of the evaluator itself, the tokenizer and the val split (and the holdout's, when scored)."""
    paths = {"evaluator": Path(__file__).resolve()}
    # Every file of the folders the evaluator reads, keyed by its path in the data folder as
    # the server's manifest names them: the server checks each against the manifest.
    for folder in ["tokenizer", "val"] + ([HOLDOUT] if holdout else []):
        for path in sorted((data_dir / folder).rglob("*")):
            if path.is_file():
                paths[path.relative_to(data_dir).as_posix()] = path
    return {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in paths.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Score a model artifact: one JSON report, on stdout or on --report-fd."
    )
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True, help="holds tokenizer/ and val/")
    parser.add_argument("--device", default=os.environ.get("AR_DEVICE", "cpu"))
    parser.add_argument("--windows", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--context",
        type=int,
        default=None,
        help="the evaluation context length (default: the device's, EVAL_CONTEXTS)",
    )
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
    parser.add_argument(
        "--holdout",
        action="store_true",
        help="also score the sealed holdout split (the runner's choice, for leaderboard entries)",
    )
    parser.add_argument(
        "--report-fd",
        type=int,
        default=None,
        help="write the report to this inherited file descriptor (one line, then closed) and "
        "send everything printed to stdout to stderr instead",
    )
    args = parser.parse_args(argv)
    if args.context is not None and not MIN_CONTEXT <= args.context <= MAX_CONTEXT:
        parser.error(f"--context must be from {MIN_CONTEXT} to {MAX_CONTEXT}")
    if args.report_fd is not None:
        # First, before torch exists in this process: the report channel is only ever written
        # by report_to below, and anything any library prints goes to the log (fd 2).
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
    if "torch" not in sys.modules:
        os.environ["TORCH_CPP_LOG_LEVEL"] = "ERROR"  # no C++ warnings echoing the program
    report, code = run_evaluation(args)
    line = json.dumps(report) + "\n"
    if args.report_fd is None:
        print(line, end="", flush=True)
    else:
        report_to(args.report_fd, line.encode())
    return code


def report_to(fd: int, data: bytes) -> None:
    """Write the report line to its own channel, all of it, then close the channel."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def run_evaluation(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """Warm up (with --wait), score and probe: the report and the exit code (0 only for ok)."""
    report: dict[str, Any] = {}
    try:
        val_set = None
        holdout: ValSet | str | None = None
        if args.wait:
            began = time.perf_counter()
            # CUDA starts now only when the runner says the GPU may hold two contexts (its
            # compute mode is Default): in an exclusive mode the training must get it first.
            warm_device = args.device if args.warm_cuda or args.device == "cpu" else "cpu"
            val_set = ValSet(
                args.data_dir, args.device, args.windows, load_to=warm_device, context=args.context
            )
            if args.holdout:
                holdout = load_holdout(
                    args.data_dir, args.device, args.windows, warm_device, args.context
                )
            with silenced():
                warm_up(warm_device)
            warm = time.perf_counter() - began
            print(f"evaluator warm in {warm:.2f} s, waiting for 'go'", file=sys.stderr, flush=True)
            if sys.stdin.readline().strip() != "go":
                report.update(
                    status="not_started", reason="stdin closed without 'go': nothing to score"
                )
                return report, EXIT_NOT_STARTED
            report["warmup_seconds"] = round(warm, 3)
        if args.holdout and holdout is None:
            holdout = load_holdout(args.data_dir, args.device, args.windows, None, args.context)
        report["hashes"] = file_hashes(args.data_dir, holdout=isinstance(holdout, ValSet))
        report.update(
            evaluate(
                args.artifact,
                args.data_dir,
                args.device,
                args.windows,
                val_set=val_set,
                holdout=holdout,
                context=args.context,
            )
        )
        report["status"] = "ok"
        return report, EXIT_OK
    except InvalidArtifact as exc:
        report.update(status="invalid_artifact", reason=str(exc))
        return report, EXIT_INVALID_ARTIFACT
    except IntegrityFailure as exc:
        report.update(status="integrity_fail", reason=str(exc))
        return report, EXIT_INTEGRITY
    except EvaluatorFailed as exc:
        report.update(status="error", reason=str(exc))
        return report, EXIT_ERROR
    except Exception as exc:  # before the val windows were in play: setup, data files, loader
        report.update(
            status="error", reason=f"the evaluator failed: {type(exc).__name__}: {str(exc)[:400]}"
        )
        return report, EXIT_ERROR


if __name__ == "__main__":
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)  # the report is out; tearing torch down would cost the run ~0.8 s more
