"""`suggest`: train.py's numeric hyperparameters found by reading the file, their search spaces,
the Optuna study fed by the record (real SQLite rows as the server writes them), the link
between a suggestion and the run that took it, and the tool through the real MCP client: its
diff applies to the agent's workspace with apply_patch, its refusals say what to send.

The labs' schedulers never start: runs inserted into the store are the record the study reads.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from sandbox.workspace import hash_files
from server import suggest, suggest_space
from server.app import build_server
from server.lab import Lab, LabSettings, unified_diff
from server.store import utc_now
from server.store.suggestions import SuggestionStore
from server.suggest_space import (
    constant_only_values,
    discover_parameters,
    line_value,
    space_for,
)

TRAIN_PY = Path(__file__).resolve().parent.parent / "trainer" / "train.py"
SEARCHED_CPU = {
    "DEPTH": 4,
    "WIDTH": 256,
    "HEAD_DIM": 64,
    "MLP_RATIO": 4,
    "SEQ_LEN": 256,
    "BATCH_SIZE": 8,
    "GRAD_ACCUM_STEPS": 1,
    "ROPE_BASE": 10_000.0,
    "MATRIX_LR": 0.02,
    "EMBED_LR": 0.01,
    "HEAD_LR": 0.004,
    "WEIGHT_DECAY": 0.0,
    "WARMUP_FRAC": 0.0,
    "WARMDOWN_FRAC": 0.5,
    "FINAL_LR_FRAC": 0.0,
}
LRS = ["MATRIX_LR", "EMBED_LR"]


def make_lab(home: Path, data_dir: Path) -> Lab:
    home.mkdir(parents=True, exist_ok=True)
    shutil.copytree(data_dir, home / "data")
    settings = LabSettings(
        home=home,
        device="cpu",
        budget_seconds=4,
        baseline_repeats=0,
        eval_windows=4,
        start_scheduler=False,
    )
    return Lab(settings)


@pytest.fixture
def lab(tmp_path: Path, data_dir: Path) -> Iterator[Lab]:
    lab = make_lab(tmp_path / "home", data_dir)
    yield lab
    lab.close()


def with_values(lab: Lab, values: dict[str, float], text: str | None = None) -> str:
    """The baseline train.py (or `text`) with some searched constants set, through the same
    edit the tool proposes."""
    current = text if text is not None else lab.baseline_files["train.py"]
    lines = current.splitlines(keepends=True)
    literals = suggest_space.top_literals(suggest_space.parse_python(current), cpu=True)
    for name, value in values.items():
        stmt, literal = literals[name]
        raw = lines[stmt.lineno - 1].encode()
        new = suggest_space.literal_text(value).encode()
        lines[stmt.lineno - 1] = (
            raw[: literal.col_offset] + new + raw[literal.end_col_offset or 0 :]
        ).decode()
    return "".join(lines)


def add_run(
    lab: Lab,
    train_py: str,
    metric_value: float | None,
    *,
    agent: str = "bob",
    status: str = "ok",
    hardware: str | None = None,
) -> int:
    """A finished run written into the store as the server records one."""
    files = {"train.py": train_py}
    diff = unified_diff(lab.baseline_files, files)
    return lab.store.create_experiment(
        agent=agent,
        kind="experiment",
        status=status,
        description="constants",
        metric_value=metric_value if status == "ok" else None,
        verdict="within_noise" if status == "ok" else "failed",
        code=files,
        code_hash=hash_files({k: v.encode() for k, v in files.items()}),
        diff_parent=diff,
        diff_baseline=diff,
        hardware=hardware or lab.hardware,
        budget_seconds=lab.level_budget("S"),
        budget_kind=lab.settings.resolved_budget_kind(),
        scale="S",
        seed=lab.settings.seed,
        flags=[],
        started_at=utc_now(),
        finished_at=utc_now(),
    )


# ---------------------------------------------------------------- parameters and spaces


def test_parameters_are_read_from_the_real_train_py() -> None:
    source = TRAIN_PY.read_text()
    cpu = discover_parameters(source, cpu=True)
    assert {n: p.baseline for n, p in cpu.items()} == SEARCHED_CPU
    # The CUDA side of `cpu if CPU_RECIPE else cuda`, the leading literal of `8 + 2 * (SCALE - 1)`.
    cuda = discover_parameters(source, cpu=False)
    assert (cuda["DEPTH"].baseline, cuda["MATRIX_LR"].baseline, cuda["EMBED_LR"].baseline) == (
        8,
        0.04,
        0.6,
    )
    # Server-owned, boolean, tuple, computed or below the file's top: never searched.
    for name in ("SCALE", "SEED", "EXPORT_RESERVE_SECONDS", "COMPILE", "ADAM_BETAS", "LOG_EVERY"):
        assert name not in cpu
    assert cpu["WIDTH"].multiple_of == "HEAD_DIM"  # `WIDTH // HEAD_DIM` in the file


def test_a_new_constant_is_found_without_code_changes() -> None:
    source = TRAIN_PY.read_text().replace(
        "HEAD_LR = 0.004",
        "HEAD_LR = 0.004\nDROPOUT = 0.1\nN_KV_HEADS = 2 if CPU_RECIPE else 4\nLOGIT_SCALE = 15.0\n"
        "EVAL_SEED = 3\nSAVE_SECONDS = 2.0",
        1,
    )
    params = discover_parameters(source, cpu=True)
    assert params["DROPOUT"].baseline == 0.1
    assert (params["DROPOUT"].low, params["DROPOUT"].high) == (0.025, 0.4)
    assert params["N_KV_HEADS"].baseline == 2
    assert params["LOGIT_SCALE"].baseline == 15.0  # only the server's SCALE is its own
    assert set(params) == set(SEARCHED_CPU) | {"DROPOUT", "N_KV_HEADS", "LOGIT_SCALE"}


def test_search_space_rules() -> None:
    width = space_for("WIDTH", 256, 0)
    assert width is not None and (width.low, width.high, width.step) == (64, 1024, 64)
    batch = space_for("BATCH_SIZE", 8, 0)
    assert batch is not None and (batch.low, batch.high, batch.step) == (2, 32, 2)
    one = space_for("GRAD_ACCUM_STEPS", 1, 0)
    assert one is not None and (one.low, one.high, one.step) == (1, 4, 1)
    lr = space_for("MATRIX_LR", 0.02, 0)
    assert lr is not None and lr.log and (lr.low, lr.high) == (0.005, 0.08)
    frac = space_for("WARMDOWN_FRAC", 0.5, 0)
    assert frac is not None and (frac.low, frac.high) == (0.125, 1.0)
    zero = space_for("WEIGHT_DECAY", 0.0, 0)
    assert zero is not None and not zero.log and (zero.low, zero.high) == (0.0, 0.1)
    for nothing in (True, 0, -3, -0.5, float("nan")):
        assert space_for("X", nothing, 0) is None
    assert width.contains(512) and not width.contains(96) and not width.contains(2048)
    assert lr.contains(0.05) and not lr.contains(0.5)


def test_only_constant_changes_are_trials(lab: Lab) -> None:
    suggester = suggest.suggester_for(lab)
    base = lab.baseline_files
    changed = with_values(lab, {"MATRIX_LR": 0.03, "DEPTH": 6})
    values = constant_only_values({"train.py": changed}, base, suggester.params, cpu=True)
    assert values is not None and values["MATRIX_LR"] == 0.03 and values["DEPTH"] == 6
    assert values["EMBED_LR"] == 0.01
    other_edit = changed.replace("return F.rms_norm", "return 1.0 * F.rms_norm")
    assert constant_only_values({"train.py": other_edit}, base, suggester.params, True) is None
    added_line = changed + "\nX = 1\n"
    assert constant_only_values({"train.py": added_line}, base, suggester.params, True) is None
    base_line = next(
        line for line in base["train.py"].splitlines() if line.startswith("MATRIX_LR = ")
    )
    cuda = base_line.split(" else ")[1].split("#")[0].strip()
    assert (
        line_value(f"MATRIX_LR = 0.03 if CPU_RECIPE else {cuda}", "MATRIX_LR", True, base_line)
        == 0.03
    )
    assert line_value("MATRIX_LR = lr()", "MATRIX_LR", True, base_line) is None


def test_a_run_cannot_label_itself_with_values_it_did_not_train_with(lab: Lab) -> None:
    """Poisoning the shared study: a line that keeps the searched literal but computes another
    value, or adds a statement, is not a parameter change: the run is no trial at all."""
    suggester = suggest.suggester_for(lab)
    base = lab.baseline_files["train.py"]
    line = next(x for x in base.splitlines() if x.startswith("MATRIX_LR = "))
    literal = line.split(" if ")[0].split("= ")[1]
    for poisoned in (
        line.replace(f"= {literal} ", "= 0.03 + 1000.0 ", 1),  # the literal, then anything
        line.split("  #")[0] + "; import os",  # a second statement on the line
        line.replace(" else ", " else 2 * ", 1),  # the other side of the recipe changed
    ):
        assert poisoned != line
        code = base.replace(line, poisoned, 1)
        assert (
            constant_only_values({"train.py": code}, lab.baseline_files, suggester.params, True)
            is None
        ), poisoned


# ---------------------------------------------------------------- the study


def test_the_study_is_fed_by_the_record(lab: Lab) -> None:
    good = add_run(lab, with_values(lab, {"MATRIX_LR": 0.03, "EMBED_LR": 0.02}), 1.90)
    add_run(lab, with_values(lab, {"MATRIX_LR": 0.01}), 2.10)
    add_run(lab, with_values(lab, {"MATRIX_LR": 0.07}), None, status="crash")
    # Left out: a value outside the space (dropped), another edit, another machine, a parameter
    # not searched in this call away from its baseline.
    add_run(lab, with_values(lab, {"MATRIX_LR": 5.0}), 0.5)
    add_run(lab, lab.baseline_files["train.py"].replace("F.rms_norm(x,", "F.rms_norm(1 * x,"), 0.4)
    add_run(lab, with_values(lab, {"MATRIX_LR": 0.03}), 0.3, hardware="another machine")
    add_run(lab, with_values(lab, {"DEPTH": 5}), 0.2)

    result = suggest.suggester_for(lab).suggest("alice", LRS, "tpe")

    assert (result.trials_complete, result.trials_failed, result.trials_dropped) == (2, 1, 1)
    assert result.best == {
        "experiment_id": good,
        "metric_value": 1.90,
        "values": {"MATRIX_LR": 0.03, "EMBED_LR": 0.02},
    }
    assert set(result.values) == set(LRS) and result.sampler == "tpe"
    for name, value in result.values.items():
        assert suggest.suggester_for(lab).params[name].contains(value)
    stored = SuggestionStore(lab.store.db).recent_of("alice", 5)
    assert [(s["id"], s["params"], s["sampler"]) for s in stored] == [
        (result.suggestion_id, result.values, "tpe")
    ]


def test_a_run_of_a_suggestion_is_linked_and_feeds_the_next_study(lab: Lab) -> None:
    suggester = suggest.suggester_for(lab)
    first = suggester.suggest("alice", LRS, "random")
    second = suggester.suggest("alice", LRS, "random")
    # The first is a running trial of the second's study: not proposed twice.
    assert second.trials_running == 1 and second.values != first.values
    ran = add_run(lab, with_values(lab, first.values), 1.75, agent="alice")

    third = suggester.suggest("alice", LRS, "tpe")

    assert third.trials_complete == 1 and third.best and third.best["experiment_id"] == ran
    assert third.trials_running == 1  # the second suggestion, still pending
    by_id = {entry["id"]: entry for entry in third.recent}
    assert by_id[first.suggestion_id]["experiment_id"] == ran
    assert by_id[first.suggestion_id]["metric_value"] == 1.75
    assert by_id[second.suggestion_id]["experiment_id"] is None


def test_the_same_record_gives_the_same_suggestion(tmp_path: Path, data_dir: Path) -> None:
    answers = []
    for copy in ("one", "two"):
        lab = make_lab(tmp_path / copy, data_dir)
        try:
            add_run(lab, with_values(lab, {"MATRIX_LR": 0.03}), 1.9)
            answers.append(suggest.suggester_for(lab).suggest("alice", LRS, "tpe").values)
        finally:
            lab.close()
    assert answers[0] == answers[1]


def test_two_agents_asking_at_once_get_different_values(lab: Lab) -> None:
    suggester = suggest.suggester_for(lab)
    results: dict[str, Any] = {}
    barrier = threading.Barrier(2)

    def ask(agent: str) -> None:
        barrier.wait()
        results[agent] = suggester.suggest(agent, LRS, "random")

    threads = [threading.Thread(target=ask, args=(name,)) for name in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results["alice"].values != results["bob"].values
    assert sorted(r.trials_running for r in results.values()) == [0, 1]


def test_auto_picks_cmaes_once_enough_runs_exist(lab: Lab) -> None:
    suggester = suggest.suggester_for(lab)
    assert suggester.suggest("alice", LRS, "auto").sampler == "tpe"
    assert suggester.suggest("alice", LRS, "cmaes").sampler == "tpe"  # too few: says so
    for i in range(suggest.CMAES_MIN_TRIALS):
        values = {"MATRIX_LR": round(0.01 + 0.004 * i, 4), "EMBED_LR": 0.01}
        add_run(lab, with_values(lab, values), 2.0 - abs(0.03 - values["MATRIX_LR"]))
    result = suggester.suggest("alice", LRS, "auto")
    assert result.sampler == "cmaes" and result.trials_complete == suggest.CMAES_MIN_TRIALS
    assert all(suggester.params[n].contains(v) for n, v in result.values.items())


def test_the_trials_fed_are_capped(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(5):
        add_run(lab, with_values(lab, {"MATRIX_LR": 0.01 + 0.001 * i}), 2.0)
    monkeypatch.setattr(suggest, "MAX_TRIALS_FED", 3)
    assert suggest.suggester_for(lab).suggest("alice", LRS, "tpe").trials_complete == 3


def test_the_width_stays_a_multiple_of_the_head_dim(lab: Lab) -> None:
    suggester = suggest.suggester_for(lab)
    for _ in range(6):
        values = suggester.suggest("alice", ["WIDTH", "HEAD_DIM"], "random").values
        assert values["WIDTH"] % values["HEAD_DIM"] == 0 and values["HEAD_DIM"] % 2 == 0


# ---------------------------------------------------------------- the tool over MCP


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


@pytest.mark.anyio
async def test_the_suggested_edit_applies_to_the_agents_workspace(lab: Lab) -> None:
    workspace = lab.workspace("alice")
    # The agent's file is no longer the baseline: a line added above, another constant changed.
    edited = with_values(lab, {"BATCH_SIZE": 16}).replace("import json\n", "import json\n\n", 1)
    workspace.replace_files({"train.py": edited.encode()})
    async with Client(build_server(lab, default_agent="alice"), mode="auto") as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert "suggest" in tools
        answer = await call(client, "suggest", parameters=["MATRIX_LR", "HEAD_LR"])
        assert answer["sampler"] == "tpe" and answer["not_in_workspace"] == []
        assert set(answer["values"]) == {"MATRIX_LR", "HEAD_LR"}
        diff_lines = [line for line in answer["diff"].splitlines() if line[:1] in "+-"]
        assert len(diff_lines) == 6  # ---/+++ and one line out, one in, per parameter
        await call(client, "apply_patch", diff=answer["diff"])
    after = workspace.read_text("train.py")
    assert after == with_values(lab, answer["values"], text=edited)
    assert "BATCH_SIZE = 16 if CPU_RECIPE" in after  # the agent's own change is kept


@pytest.mark.anyio
async def test_bad_arguments_are_refused_with_what_to_send(lab: Lab) -> None:
    store = SuggestionStore(lab.store.db)
    suggest.suggester_for(lab)
    async with Client(build_server(lab, default_agent="alice"), mode="auto") as client:
        unknown = await client.call_tool("suggest", {"parameters": ["MATRIX_LR", "DROPOUT"]})
        assert unknown.is_error
        text = unknown.content[0].text  # type: ignore[union-attr]
        assert "unknown parameter(s) 'DROPOUT'" in text and "MATRIX_LR, EMBED_LR" in text
        sampler = await client.call_tool("suggest", {"sampler": "bayes"})
        assert sampler.is_error
        assert "'auto', 'tpe', 'cmaes' or 'random'" in sampler.content[0].text  # type: ignore[union-attr]
        too_long = await client.call_tool("suggest", {"parameters": ["X" * 65]})
        assert too_long.is_error
    assert store.count() == 0
