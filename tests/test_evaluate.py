"""trainer/evaluate.py: exact val_bpb, and every bad or hostile artifact refused in one line, safely."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from trainer import evaluate as evaluate_module

REPO_ROOT = Path(__file__).resolve().parent.parent
EVALUATE_PY = REPO_ROOT / "trainer" / "evaluate.py"
TRAIN_PY = REPO_ROOT / "trainer" / "train.py"
CONTEXT = evaluate_module.EVAL_CONTEXT
PROBE_WINDOWS = 4  # enough rows for the causality and batch probes, fast on two cores
SYMBOL = re.compile(r"Symbol\('s\d+', positive=True, integer=True\)")  # the batch size symbol


def vocab_of(data_dir: Path) -> int:
    """The prepared vocabulary size."""
    return int(json.loads((data_dir / "tokenizer" / "tokenizer.json").read_text())["vocab_size"])


def uniform_bpb(data_dir: Path, windows: int) -> float:
    """log2(V) bits for every scored target (all but <|endoftext|>), over their UTF-8 bytes."""
    import numpy as np

    val = np.fromfile(data_dir / "val" / "tokens.bin", dtype="<u2")
    token_bytes = np.fromfile(data_dir / "tokenizer" / "token_bytes.bin", dtype="<i4")
    targets = evaluate_module.val_windows(val, CONTEXT, windows)[:, 1:]
    nbytes = token_bytes[targets]
    return math.log2(vocab_of(data_dir)) * int((nbytes > 0).sum()) / int(nbytes.sum())


def export(model: nn.Module, path: Path) -> Path:
    """Export like train.py does: eval mode, fp32, int64 [B, T] input with a dynamic batch dimension."""
    example = torch.zeros(2, CONTEXT, dtype=torch.long)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, path)
    return path


def run_main(
    artifact: Path, data_dir: Path, capsys: pytest.CaptureFixture, windows: int | None = None
) -> tuple[int, dict]:
    """evaluate.main in this process: its exit code and its one JSON line (stdout must hold only that)."""
    argv = ["--artifact", str(artifact), "--data-dir", str(data_dir)]
    if windows is not None:
        argv += ["--windows", str(windows)]
    code = evaluate_module.main(argv)
    out = capsys.readouterr().out
    assert out.endswith("\n") and out.count("\n") == 1, out
    assert "Traceback" not in out
    return code, json.loads(out)


def run_cli(artifact: Path, data_dir: Path, *extra: str, cwd: Path) -> tuple[int, dict, str]:
    """`python trainer/evaluate.py` in a fresh process: exit code, the parsed JSON, stderr."""
    proc = subprocess.run(
        [
            sys.executable,
            str(EVALUATE_PY),
            "--artifact",
            str(artifact),
            "--data-dir",
            str(data_dir),
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={**os.environ, "AR_DEVICE": "cpu"},
    )
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout
    return proc.returncode, json.loads(lines[0]), proc.stderr


# ---------------------------------------------------------------- models


class Uniform(nn.Module):
    """Zero logits: every token equally likely, ln V nats per token."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.zeros(idx.size(0), idx.size(1), self.vocab)


class Bigram(nn.Module):
    """An honest causal model (a bigram table): the base for the broken variants below."""

    def __init__(self, vocab: int, out: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, 16)
        self.head = nn.Linear(16, out or vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(idx))


class WideLogits(Bigram):
    """[B, T, V + 1]: one logit too many."""

    def __init__(self, vocab: int) -> None:
        super().__init__(vocab, vocab + 1)


class LastOnly(Bigram):
    """[B, V]: only the last position."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return super().forward(idx)[:, -1, :]


class NaNLogits(Bigram):
    """NaN everywhere."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return super().forward(idx) * float("nan")


class HugeLogits(Bigram):
    """Finite but absurd logits (1e6)."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return super().forward(idx) * 0 + 1e6


class NonCausal(Bigram):
    """Logits at t read the mean embedding of all positions, the future included."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        return self.head(x + x.mean(dim=1, keepdim=True))


class MixesRows(Bigram):
    """Adds the batch mean of the token ids: each row reads the others."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return super().forward(idx) + idx.float().mean(0)[None, :, None]


class MixesFirstTokens(Bigram):
    """Reads the other rows only at position 0 (never changed by the causality probe), symmetrically."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return super().forward(idx) + idx[:, :1].float().mean(0)[None, :, None]


class ReadsRowIndex(Bigram):
    """Adds its row index: honest in every row, but not the same function in every row."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(idx.size(0), device=idx.device, dtype=torch.float32)
        return super().forward(idx) + rows[:, None, None] * 0.01


class RaisesWithTokens(Bigram):
    """Indexes a one-entry table with its input tokens + TOKEN_OFFSET: the error names a val token."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        table = torch.zeros(1, device=idx.device)
        return super().forward(idx) + table[idx + TOKEN_OFFSET].sum() * 0


TOKEN_OFFSET = 31_000_000


class RandomNoise(Bigram):
    """Calls a random op in forward."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits = super().forward(idx)
        return logits + torch.rand_like(logits)


@pytest.fixture(scope="module")
def bigram_artifact(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An honest exported model, the base of the archive tampering tests."""
    return export(Bigram(vocab_of(data_dir)), tmp_path_factory.mktemp("bigram") / "model.pt2")


# ---------------------------------------------------------------- scoring


def test_uniform_model_scores_log2_vocab_per_token(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Zero logits give exactly log2(V) bits per scored token, spread over the scored bytes."""
    vocab = vocab_of(data_dir)
    artifact = export(Uniform(vocab), tmp_path / "model.pt2")
    code, report = run_main(artifact, data_dir, capsys)
    assert (code, report["status"]) == (0, "ok"), report
    windows = evaluate_module.EVAL_WINDOWS["cpu"]
    assert report["val_bpb"] == pytest.approx(uniform_bpb(data_dir, windows), rel=1e-6)
    assert report["windows"] == windows
    assert report["context"] == CONTEXT
    assert report["vocab_size"] == vocab
    # 24 windows: two batches of 12 rows; PROBE_ROWS re-run rows, one decoy row per pass.
    rows = evaluate_module.batch_rows(windows)
    passes = -(-evaluate_module.PROBE_ROWS["cpu"] // rows)
    assert (rows, passes) == (12, 4)
    assert report["causality"] == {"probes": passes * (rows - 1), "passes": passes, "passed": True}
    on_disk = {
        p.relative_to(data_dir).as_posix()
        for folder in ("tokenizer", "val")
        for p in (data_dir / folder).rglob("*")
        if p.is_file()
    }
    assert set(report["hashes"]) == {"evaluator", *on_disk} and "val/tokens.bin" in on_disk
    # Nothing else: no data-derived figure (val loss in nats, token or byte counts, leak sizes).
    assert set(report) == {
        "hashes", "val_bpb", "windows", "context", "vocab_size", "causality", "status",
        "load_seconds", "score_seconds", "probe_seconds", "total_seconds",
    }  # fmt: skip


def test_val_windows_are_spread_over_the_whole_split(data_dir: Path) -> None:
    """Fewer windows than the split holds: even strides from its first token to its last, targets
    never overlapping, so every part of val counts; as many as it holds: all, consecutive."""
    import numpy as np

    val = np.fromfile(data_dir / "val" / "tokens.bin", dtype="<u2")
    token_bytes = np.fromfile(data_dir / "tokenizer" / "token_bytes.bin", dtype="<i4")
    available = (val.size - 1) // CONTEXT
    windows = evaluate_module.val_windows(val, CONTEXT, 3)
    assert windows.shape == (3, CONTEXT + 1)
    stride = (val.size - CONTEXT - 1) // 2
    assert stride >= CONTEXT
    for i, start in enumerate((0, stride, 2 * stride)):
        assert (windows[i] == val[start : start + CONTEXT + 1]).all()
    assert 2 * stride + CONTEXT + 1 > val.size - CONTEXT  # the last window reaches the end
    assert int(token_bytes[windows[:, 1:]].sum()) > 0

    every = evaluate_module.val_windows(val, CONTEXT, available + 10)
    assert every.shape == (available, CONTEXT + 1)
    assert (every[:, 1:].reshape(-1) == val[1 : available * CONTEXT + 1]).all()
    assert (every[:, :-1].reshape(-1) == val[: available * CONTEXT]).all()


@pytest.mark.e2e
def test_trained_baseline_is_accepted_and_beats_uniform(data_dir: Path, tmp_path: Path) -> None:
    """train.py under an 8 s budget leaves a model.pt2 the evaluator scores below the uniform bpb."""
    env = {
        **os.environ,
        "AR_BUDGET_SECONDS": "8",
        "AR_DATA_DIR": str(data_dir),
        "AR_OUT_DIR": str(tmp_path),
        "AR_SEED": "1",
        "AR_DEVICE": "cpu",
        "AR_EVAL_CONTEXT": str(CONTEXT),
    }
    started = time.monotonic()
    train = subprocess.run(
        [sys.executable, str(TRAIN_PY)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    assert re.search(r"^tokens_per_second:\s+\d+$", train.stdout, re.M), train.stdout[-2000:]
    assert elapsed < 8 + 30, f"train.py took {elapsed:.1f} s under an 8 s budget"
    artifact = tmp_path / "model.pt2"
    assert artifact.is_file()

    code, report, stderr = run_cli(artifact, data_dir, cwd=tmp_path)
    assert (code, report["status"]) == (0, "ok"), (report, stderr[-2000:])
    uniform = uniform_bpb(data_dir, report["windows"])
    assert 0 < report["val_bpb"] < uniform
    assert report["causality"]["passed"] is True  # the real model, moved across rows and batches


# ---------------------------------------------------------------- models the evaluator must refuse

BAD_MODELS: dict[str, tuple[Callable[[int], nn.Module], str, list[str]]] = {
    "logits [B, T, V+1]": (WideLogits, "integrity_fail", ["logits tensor of shape [B, T, V]"]),
    "logits [B, V]": (LastOnly, "integrity_fail", ["logits tensor of shape [B, T, V]"]),
    "NaN logits": (NaNLogits, "integrity_fail", ["NaN or infinite logits"]),
    "huge logits": (HugeLogits, "integrity_fail", ["logits larger than 10000"]),
    "non-causal": (
        NonCausal,
        "integrity_fail",
        ["causality probe failed", "attention must be causal"],
    ),
    "mixes batch rows": (MixesRows, "integrity_fail", ["batch independence failed"]),
    "depends on its row": (
        ReadsRowIndex,
        "integrity_fail",
        ["batch independence failed", "no dependence on the row"],
    ),
    "raises on val data": (
        RaisesWithTokens,
        "invalid_artifact",
        ["the model raised an error on a batch of zeros"],
    ),
    "random op": (
        RandomNoise,
        "invalid_artifact",
        ["rand_like", "randomness", "must be deterministic"],
    ),
}
EXIT_CODES = {"invalid_artifact": 3, "integrity_fail": 4}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_bad_model_is_refused(
    case: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Wrong shapes, bad values, future or cross-row reads and randomness: refused with a one-line reason."""
    build, status, phrases = BAD_MODELS[case]
    artifact = export(build(vocab_of(data_dir)), tmp_path / "model.pt2")
    code, report = run_main(artifact, data_dir, capsys, windows=PROBE_WINDOWS)
    assert (report["status"], code) == (status, EXIT_CODES[status]), report
    assert "val_bpb" not in report
    assert "\n" not in report["reason"]
    for phrase in phrases:
        assert phrase in report["reason"], report["reason"]
    # Reasons about running the model are fixed texts: no value, position, shape or message
    # derived from running it on the val windows; the only numbers are the expected shape and
    # the logit limit.
    fixed = re.sub(r"\[B, T, V\] = \[[\d, ]+\]|10000", "", report["reason"])
    if case == "raises on val data":  # it raises on zeros too: that error (no val data) is shown
        import numpy as np

        val = np.fromfile(data_dir / "val" / "tokens.bin", dtype="<u2")
        tokens = evaluate_module.val_windows(val, CONTEXT, PROBE_WINDOWS).reshape(-1)
        leaked = {str(TOKEN_OFFSET + int(t)) for t in tokens if t != 0}
        assert not set(re.findall(r"\d+", report["reason"])) & leaked, report["reason"]
        return
    assert not re.search(r"\d", fixed), report["reason"]


def test_honest_model_passes_the_same_probe(
    data_dir: Path, bigram_artifact: Path, capsys: pytest.CaptureFixture
) -> None:
    """The control for the refusals above: the same probe settings accept an honest model."""
    code, report = run_main(bigram_artifact, data_dir, capsys, windows=PROBE_WINDOWS)
    assert (code, report["status"]) == (0, "ok"), report
    # 4 windows: one batch of 4 rows; each pass checks 3 windows beside one decoy row.
    passes = evaluate_module.PROBE_ROWS["cpu"] // PROBE_WINDOWS
    assert report["causality"] == {"probes": 3 * passes, "passes": passes, "passed": True}


def test_symmetric_cross_row_read_is_refused(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A row must not read other rows even through a symmetric function (mean) of their first tokens."""
    artifact = export(MixesFirstTokens(vocab_of(data_dir)), tmp_path / "model.pt2")
    code, report = run_main(artifact, data_dir, capsys, windows=PROBE_WINDOWS)
    assert (report["status"], code) == ("integrity_fail", 4), report


# ---------------------------------------------------------------- broken and hostile archives


def rewrite(
    source: Path, target: Path, change: Callable[[dict[str, bytes]], dict[str, bytes]]
) -> Path:
    """Copy a .pt2 zip entry by entry through `change` (entries by name -> bytes)."""
    with zipfile.ZipFile(source) as archive:
        entries = {info.filename: archive.read(info) for info in archive.infolist()}
    with zipfile.ZipFile(target, "w") as out:
        for name, data in change(entries).items():
            out.writestr(name, data)
    return target


def entry(entries: dict[str, bytes], suffix: str) -> str:
    """The one archive entry whose name ends with suffix."""
    (name,) = [n for n in entries if n.endswith(suffix)]
    return name


class Touch:
    """A pickle payload that creates a marker file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def add_shared_object(entries: dict[str, bytes], marker: Path) -> dict[str, bytes]:
    """An extra `data/evil.so` beside the model."""
    prefix = entry(entries, "models/model.json").split("/")[0]
    return {**entries, f"{prefix}/data/evil.so": b"\x7fELF" + b"\x00" * 60}


def pickled_weights(entries: dict[str, bytes], marker: Path) -> dict[str, bytes]:
    """`use_pickle: true` in the weights config, with a weight replaced by a code-running pickle."""
    config_name = entry(entries, "data/weights/model_weights_config.json")
    config = json.loads(entries[config_name])
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    weight_name = entry(entries, f"data/weights/{first['path_name']}")
    return {
        **entries,
        config_name: json.dumps(config).encode(),
        weight_name: pickle.dumps(Touch(marker)),
    }


def guard_code(entries: dict[str, bytes], marker: Path) -> dict[str, bytes]:
    """A non-empty `guards_code` (strings the loader may exec)."""
    name = entry(entries, "models/model.json")
    model = json.loads(entries[name])
    model["guards_code"] = [f"__import__('os').system('touch {marker}')"]
    return {**entries, name: json.dumps(model).encode()}


def sympy_injection(entries: dict[str, bytes], marker: Path) -> dict[str, bytes]:
    """A symbolic size whose expr_str is Python code (sympify evaluates it)."""
    name = entry(entries, "models/model.json")
    text = entries[name].decode()
    changed, count = SYMBOL.subn(f"__import__('os').system('touch {marker}')", text)
    assert count > 0
    return {**entries, name: changed.encode()}


def name_injection(entries: dict[str, bytes], marker: Path) -> dict[str, bytes]:
    """A parameter renamed to Python code: torch.fx writes such a name unescaped into the code it
    generates (`getattr(self, "NAME")`), so the payload would run at the first forward pass."""
    name = entry(entries, "models/model.json")
    config_name = entry(entries, "data/weights/model_weights_config.json")
    model, config = json.loads(entries[name]), json.loads(entries[config_name])
    code = f"open({str(marker)!r}, 'w').close()".encode().hex()  # no dots: fx splits names on them
    payload = f'w") if exec(getattr(bytes, "fromhex")("{code}")) else getattr(self, "w'
    (spec,) = [s for s in model["graph_module"]["signature"]["input_specs"] if "parameter" in s][:1]
    old = spec["parameter"]["parameter_name"]
    spec["parameter"]["parameter_name"] = payload
    config["config"] = {payload if k == old else k: v for k, v in config["config"].items()}
    return {
        **entries,
        name: json.dumps(model).encode(),
        config_name: json.dumps(config).encode(),
    }


HOSTILE = {
    "extra .so entry": (add_shared_object, ["contains 'data/evil.so'", "may not contain"]),
    "code in a parameter name": (name_injection, ["names must be plain identifiers"]),
    "use_pickle": (pickled_weights, ["stores tensors as pickles"]),
    "guards_code": (guard_code, ["carries guard code"]),
    "sympy expr_str": (sympy_injection, ["symbolic shape expression", "is not allowed"]),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_archive_is_refused_without_running_code(
    case: str, data_dir: Path, bigram_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Archives that would run code at load are refused before loading: no marker file appears."""
    change, phrases = HOSTILE[case]
    marker = tmp_path / "MARKER"
    artifact = rewrite(bigram_artifact, tmp_path / "model.pt2", lambda e: change(e, marker))
    code, report = run_main(artifact, data_dir, capsys, windows=PROBE_WINDOWS)
    assert (report["status"], code) == ("invalid_artifact", 3), report
    assert "\n" not in report["reason"]
    for phrase in phrases:
        assert phrase in report["reason"], report["reason"]
    assert not marker.exists()


def test_hostile_archives_in_a_fresh_process(
    data_dir: Path, bigram_artifact: Path, tmp_path: Path
) -> None:
    """The CLI refuses the code-running archives in a fresh process too; plain torch.export.load would run them.

    The control (loading the same files with torch.export.load) proves the payloads are live,
    so a missing marker means the evaluator stopped them, not that the attack was inert.
    """
    cases = {"pickle": pickled_weights, "sympy": sympy_injection}
    for name, change in cases.items():
        marker = tmp_path / f"MARKER-{name}"
        artifact = rewrite(
            bigram_artifact, tmp_path / f"{name}.pt2", lambda e, c=change, m=marker: c(e, m)
        )
        code, report, _ = run_cli(artifact, data_dir, "--windows", str(PROBE_WINDOWS), cwd=tmp_path)
        assert (report["status"], code) == ("invalid_artifact", 3), report
        assert not marker.exists(), name
    control = "import sys, torch\nfor p in sys.argv[1:]:\n    try: torch.export.load(p)\n    except Exception: pass\n"
    subprocess.run(
        [sys.executable, "-c", control, *(str(tmp_path / f"{n}.pt2") for n in cases)],
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert all((tmp_path / f"MARKER-{name}").exists() for name in cases), (
        "the control payloads did not run"
    )


def not_a_pt2(entries: dict[str, bytes], marker: Path) -> dict[str, bytes]:
    """A zip of unrelated files."""
    return {"stuff/readme.txt": b"hello", "stuff/notes.md": b"# notes"}


def no_model_json(entries: dict[str, bytes], marker: Path) -> dict[str, bytes]:
    """Only the allowed-looking entries, without the program."""
    return {n: d for n, d in entries.items() if not n.endswith("models/model.json")}


def two_folders(entries: dict[str, bytes], marker: Path) -> dict[str, bytes]:
    """A second top-level folder beside the archive's."""
    return {**entries, "other/models/model.json": b"{}"}


BROKEN: dict[str, tuple[Callable[[Path, Path], Path] | None, list[str]]] = {
    "missing": (None, ["no model artifact at model.pt2", "$AR_OUT_DIR"]),
    "truncated": (
        lambda src, dst: dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2]) and dst,
        ["is not a torch.export archive"],
    ),
    "zip, not a pt2": (
        lambda src, dst: rewrite(src, dst, lambda e: not_a_pt2(e, dst)),
        ["contains 'readme.txt'", "may not contain"],
    ),
    "no models/model.json": (
        lambda src, dst: rewrite(src, dst, lambda e: no_model_json(e, dst)),
        ["has no models/model.json"],
    ),
    "two folders": (
        lambda src, dst: rewrite(src, dst, lambda e: two_folders(e, dst)),
        ["more than one archive folder"],
    ),
    "text file": (
        lambda src, dst: dst.write_text("not a model\n") and dst,
        ["is not a torch.export archive"],
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_artifact_is_invalid(
    case: str, data_dir: Path, bigram_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Missing, truncated or foreign files: invalid_artifact, exit 3, a one-line reason."""
    make, phrases = BROKEN[case]
    artifact = tmp_path / "model.pt2"
    if make is not None:
        make(bigram_artifact, artifact)
    code, report = run_main(artifact, data_dir, capsys, windows=PROBE_WINDOWS)
    assert (report["status"], code) == ("invalid_artifact", 3), report
    assert "\n" not in report["reason"]
    for phrase in phrases:
        assert phrase in report["reason"], report["reason"]


def test_sympy_power_is_not_allowed() -> None:
    """Power expressions in symbolic sizes are refused (sympify would evaluate 9**9**9 for ever)."""
    with pytest.raises(evaluate_module.InvalidArtifact):
        evaluate_module._check_sympy("Symbol('s77', positive=True, integer=True)*0+9**9**9")


# ---------------------------------------------------------------- the probe's secrets and the report


def test_probe_randomness_is_fresh_and_the_score_is_not(
    data_dir: Path, bigram_artifact: Path, capsys: pytest.CaptureFixture
) -> None:
    """No seed an agent could read: layout and cuts come from the OS in every run, while val_bpb
    does not depend on them (summed by window in a fixed order): two runs, the same score."""
    assert not hasattr(evaluate_module, "PROBE_SEED")
    draws = {tuple(evaluate_module.secure_below(255, 8)) for _ in range(3)}
    assert len(draws) == 3
    perms = {tuple(evaluate_module.secure_permutation(24)) for _ in range(3)}
    assert len(perms) == 3 and all(sorted(p) == list(range(24)) for p in perms)
    scores = {
        run_main(bigram_artifact, data_dir, capsys, windows=6)[1]["val_bpb"] for _ in range(2)
    }
    assert len(scores) == 1


def test_report_goes_to_its_own_fd_only(
    data_dir: Path, bigram_artifact: Path, tmp_path: Path
) -> None:
    """--report-fd N: one JSON line on fd N, then closed; stdout is sent to the log (stderr), so
    nothing printed by any library can pose as the report. --wait still takes 'go' on stdin."""
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(EVALUATE_PY),
            "--artifact",
            str(bigram_artifact),
            "--data-dir",
            str(data_dir),
            "--windows",
            str(PROBE_WINDOWS),
            "--wait",
            "--report-fd",
            str(write_end),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(write_end,),
        cwd=tmp_path,
        env={**os.environ, "AR_DEVICE": "cpu"},
    )
    os.close(write_end)
    out, err = proc.communicate(b"go\n", timeout=180)
    with os.fdopen(read_end, "rb") as channel:
        report_bytes = channel.read()  # EOF: the evaluator closed its end
    assert proc.returncode == 0, err.decode()[-2000:]
    assert out == b"", out
    assert report_bytes.endswith(b"\n") and report_bytes.count(b"\n") == 1, report_bytes
    report = json.loads(report_bytes)
    assert report["status"] == "ok"
    assert b"waiting for 'go'" in err and b'"status"' not in err


def test_report_fd_must_be_open(data_dir: Path, bigram_artifact: Path, tmp_path: Path) -> None:
    """A report fd that is not open (or a standard stream): an error on stderr, exit 5, no report."""
    for fd in ("1", "97"):
        proc = subprocess.run(
            [sys.executable, str(EVALUATE_PY), "--artifact", str(bigram_artifact), "--data-dir",
             str(data_dir), "--report-fd", fd],
            capture_output=True, text=True, cwd=tmp_path, timeout=120,
        )  # fmt: skip
        assert proc.returncode == evaluate_module.EXIT_ERROR, proc.stderr
        assert proc.stdout == "" and f"--report-fd {fd} is not usable" in proc.stderr


def test_error_on_any_tokens_is_explained(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A model that raises on a batch of zeros too: that error's text carries no val data, so it is shown."""
    example = torch.zeros(2, CONTEXT, dtype=torch.long)
    program = torch.export.export(Bigram(vocab_of(data_dir)).eval(), (example,))  # static batch 2
    torch.export.save(program, tmp_path / "model.pt2")
    code, report = run_main(tmp_path / "model.pt2", data_dir, capsys, windows=PROBE_WINDOWS)
    assert (report["status"], code) == ("invalid_artifact", 3), report
    assert "raised an error on a batch of zeros [4, 256] (no val data" in report["reason"]
    assert "equal to 2" in report["reason"]


def test_context_follows_the_argument_and_the_device(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--context scores windows of that length (the CUDA recipe's 2048 is the CUDA default) and
    the probes run at that shape; a length out of range is refused before anything loads."""
    assert evaluate_module.EVAL_CONTEXTS == {"cpu": CONTEXT, "cuda": 2048}
    long = 2 * CONTEXT
    example = torch.zeros(2, long, dtype=torch.long)
    program = torch.export.export(
        Bigram(vocab_of(data_dir)).eval(),
        (example,),
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
    )
    artifact = tmp_path / "model.pt2"
    torch.export.save(program, artifact)
    code = evaluate_module.main(
        ["--artifact", str(artifact), "--data-dir", str(data_dir), "--context", str(long),
         "--windows", str(PROBE_WINDOWS)]
    )  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert (code, report["status"]) == (0, "ok"), report
    assert report["context"] == long and report["windows"] == PROBE_WINDOWS
    assert report["causality"]["passed"] and report["causality"]["probes"] > 0
    with pytest.raises(SystemExit):
        evaluate_module.main(
            ["--artifact", str(artifact), "--data-dir", str(data_dir), "--context", "8"]
        )
    assert "--context must be from" in capsys.readouterr().err


def test_target_context_per_device(tmp_path: Path) -> None:
    """target.toml's eval_context: one number, or a table by device kind (CUDA runs at 2048)."""
    from sandbox.target import load_target

    shipped = load_target()
    assert (shipped.context_for("cpu"), shipped.context_for("cuda:1")) == (CONTEXT, 2048)
    # (a copy elsewhere: without the program file the shipped one names beside it)
    text = (
        (REPO_ROOT / "trainer" / "target.toml").read_text().replace('program = "../program.md"', "")
    )
    single = tmp_path / "target.toml"
    single.write_text(
        text.replace("eval_context = { cpu = 256, cuda = 2048 }", "eval_context = 512")
    )
    target = load_target(single)
    assert (target.context_for("cpu"), target.context_for("cuda")) == (512, 512)
    single.write_text(text.replace("eval_context = { cpu = 256, cuda = 2048 }", "eval_context = 3"))
    with pytest.raises(ValueError, match="eval_context must be a whole number from 16"):
        load_target(single)
