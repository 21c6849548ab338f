"""Red team: the lab's rules -- quotas, authorship, the promotion ladder, the submit lock, ids.

Each attack goes through the MCP tools (an in-memory client per agent, the real Lab, real
SQLite). Most labs here never start the scheduler: what is under test is what the server
records and refuses, so runs stay queued or are finished through the lab's own on_finish
with a RunResult, as the scheduler would. One test trains for real: a train.py that keeps
going past its budget into the grace period.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

import server.lab as lab_module
from sandbox.runner import RunResult
from sandbox.workspace import hash_files
from server.app import build_server
from server.auth import issue_token, lookup_token
from server.lab import Lab, LabError, LabSettings
from server.record import SERVER_CONFIRMATION
from server.store import utc_now
from server.verdicts import over_budget_tolerance

from . import patches
from .mallory import FINAL, RUN_DEADLINE_SECONDS, make_lab

pytestmark = [pytest.mark.anyio]

QUIET = {"start_scheduler": False}  # nothing trains: runs stay queued unless a test finishes them


@pytest.fixture
def quiet_lab(tmp_path: Path, data_dir: Path) -> Iterator[Lab]:
    lab = make_lab(tmp_path / "home", data_dir, promotion_repeats=1, **QUIET)
    yield lab
    lab.close()


@asynccontextmanager
async def as_agent(lab: Lab, name: str) -> AsyncIterator[Client]:
    async with Client(build_server(lab, default_agent=name)) as client:
        yield client


async def ok(client: Client, tool: str, **arguments: Any) -> Any:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, f"{tool} refused: {result.content}"
    content = result.structured_content
    return content.get("result", content) if isinstance(content, dict) else content


async def refused(lab: Lab, client: Client, tool: str, **arguments: Any) -> str:
    """Call a tool that must refuse; nothing may be recorded; the text the model reads."""
    before = lab.store.count_experiments()
    result = await client.call_tool(tool, arguments)
    assert result.is_error, f"{tool} was not refused: {result.structured_content}"
    assert lab.store.count_experiments() == before, f"{tool} recorded runs although refused"
    return result.content[0].text


def variant(lab: Lab, old: str, new: str) -> dict[str, str]:
    text = lab.baseline_files["train.py"]
    assert text.count(old) == 1, old
    return {"train.py": text.replace(old, new)}


def record(
    lab: Lab,
    agent: str,
    description: str,
    metric_value: float,
    files: dict[str, str],
    *,
    kind: str = "experiment",
    confirms_id: int | None = None,
) -> int:
    """A finished run written straight into the store, as the server records one."""
    return lab.store.create_experiment(
        agent=agent,
        kind=kind,
        status="ok",
        description=description,
        metric_value=metric_value,
        verdict="within_noise",
        code=files,
        code_hash=hash_files({k: v.encode() for k, v in files.items()}),
        diff_parent="",
        diff_baseline="",
        confirms_id=confirms_id,
        hardware=lab.hardware,
        budget_seconds=lab.level_budget("S"),
        budget_kind=lab.settings.budget_kind,
        scale="S",
        seed=lab.settings.seed,
        flags=[],
        started_at=utc_now(),
        finished_at=utc_now(),
    )


def confirmed_win(lab: Lab, agent: str, knob: tuple[str, str], metric_value: float) -> int:
    """An experiment of `agent` the server confirmed on a fresh seed (`improved`): promotable."""
    files = variant(lab, *knob)
    experiment_id = record(lab, agent, f"{knob[1]}", metric_value, files)
    record(
        lab,
        agent,
        f"{SERVER_CONFIRMATION} #{experiment_id}",
        metric_value + 0.001,
        files,
        kind="confirmation",
        confirms_id=experiment_id,
    )
    lab.store.update_experiment(experiment_id, verdict="improved")
    return experiment_id


def finish(
    lab: Lab, experiment_id: int, status: str = "ok", metric_value: float | None = 3.0
) -> None:
    """Finish a queued run through the lab's own path (what the scheduler does after a run)."""
    lab.store.update_experiment(experiment_id, status="running", started_at=utc_now())
    lab.on_finish(
        experiment_id,
        RunResult(
            status=status,  # type: ignore[arg-type]
            metric_value=metric_value if status == "ok" else None,
            failure_reason=None if status == "ok" else "train.py raised RuntimeError: boom",
            cpu_share=0.95,
            phase="done",
        ),
    )


def stop_live_runs(lab: Lab) -> None:
    """End every queued run (as cancelled): the live-at-a-time limit is out of the way."""
    for row in lab.store.list_experiments(status="queued", limit=1000, columns=["id"]):
        lab.store.update_experiment(row["id"], status="cancelled", finished_at=utc_now())


LR = ("MATRIX_LR = 0.02", "MATRIX_LR = 0.03")
WARMDOWN = ("WARMDOWN_FRAC = 0.5", "WARMDOWN_FRAC = 0.6")
BETAS = ("ADAM_BETAS = (0.8, 0.95)", "ADAM_BETAS = (0.85, 0.95)")


# ---------------------------------------------------------------- 5. limits that do not limit


async def test_confirm_promote_combine_count_against_quota(quiet_lab: Lab) -> None:
    """Hack: with an operator limit of 1 experiment, queue run after run through
    confirm_experiment (and promote, combine), which skipped the quota (check_quota=False):
    the review queued 20 confirmation runs this way. Defence: every run an agent causes goes
    through the same quota check, charged to the agent that asked (requested_by): live runs at
    a time, experiments in all (every run of a batch), device-hours."""
    lab = quiet_lab
    a = confirmed_win(lab, "alice", LR, 3.10)
    b = confirmed_win(lab, "alice", WARMDOWN, 3.12)
    c = confirmed_win(lab, "alice", BETAS, 3.14)
    lab.store.set_quota("mallory", max_experiments=1)
    lab.store.set_quota("alice", max_experiments=2)
    lab.store.set_quota("carol", max_experiments=1)

    async with as_agent(lab, "mallory") as mallory:
        first = await ok(mallory, "confirm_experiment", experiment_id=a, repeats=1)
        text = await refused(lab, mallory, "confirm_experiment", experiment_id=a, repeats=1)
        assert "you may have 1 live at a time" in text and "wait_experiment" in text, text
        stop_live_runs(lab)
        for _ in range(3):  # the review's loop: it stops at the limit
            text = await refused(lab, mallory, "confirm_experiment", experiment_id=b, repeats=1)
            assert "quota reached: agent mallory may run 1 experiments in all" in text, text
            assert "ask the operator to raise it" in text
        # a batch larger than what is left is refused whole (nothing half-queued)
        text = await refused(lab, mallory, "confirm_experiment", experiment_id=b, repeats=5)
        assert "quota reached" in text
        assert [run.get("requested_by") for run in first] == ["mallory"]

    async with as_agent(lab, "alice") as alice:
        # A promotion queues its paired run and the level's missing baseline: 2 runs, her limit.
        promotion = (await ok(alice, "promote", experiment_id=a))["promotion"]
        charged = lab.store.list_experiments(
            requested_by="alice", columns=["id", "kind", "agent"], limit=10
        )
        assert sorted(r["kind"] for r in charged) == ["baseline", "promotion"], charged
        assert {r["id"] for r in charged} == set(promotion["run_ids"] + promotion["baseline_ids"])
        stop_live_runs(lab)
        text = await refused(lab, alice, "promote", experiment_id=b)
        assert "quota reached: agent alice may run 2 experiments in all" in text, text
        text = await refused(lab, alice, "combine", experiment_ids=[b, c])
        assert "quota reached: agent alice may run 2 experiments in all" in text, text

    async with as_agent(lab, "carol") as carol:
        combined = await ok(carol, "combine", experiment_ids=[a, b])
        assert combined["experiment"]["requested_by"] == "carol"
        stop_live_runs(lab)
        text = await refused(lab, carol, "combine", experiment_ids=[a, c])
        assert "quota reached: agent carol may run 1 experiments in all" in text, text

    # Device-hours count the runs an agent asked for, whoever is credited with them.
    lab.store.set_quota("dave", max_device_hours=0.5)
    async with as_agent(lab, "dave") as dave:
        (run,) = await ok(dave, "confirm_experiment", experiment_id=c, repeats=1)
        assert run["agent"] == "alice" and run["requested_by"] == "dave"
        lab.store.update_experiment(
            run["id"], status="ok", total_seconds=1900.0, finished_at=utc_now()
        )
        text = await refused(lab, dave, "confirm_experiment", experiment_id=c, repeats=1)
        assert "quota reached: agent dave has used 0.53 of 0.5 device-hours" in text, text


async def test_reserved_server_name_cannot_dodge_quotas(quiet_lab: Lab) -> None:
    """Hack: connect as agent `server` (a token or --agent named like the server's own runs):
    its run_experiment would be recorded as a server run, charged to nobody, past every quota.
    Defence: the name is reserved: no server is built for it as the stdio agent, a token issued
    to it does not authenticate, and every workspace action of the lab refuses it."""
    lab = quiet_lab
    lab.store.set_quota("server", max_experiments=1)
    with pytest.raises(LabError, match="reserved for the server's own runs"):
        build_server(lab, default_agent="server")
    assert lookup_token(lab.store, issue_token(lab.store, "server")) is None
    with pytest.raises(LabError, match="reserved for the server's own runs"):
        lab.submit("server", "free runs")
    assert lab.store.count_experiments() == 0


async def test_only_author_promotes(quiet_lab: Lab) -> None:
    """Hack: promote another agent's confirmed win: the promotion and its runs were recorded as
    the promoter's (its leaderboard entries at the larger level carried the promoter's name).
    Defence: only the author promotes (or the operator, through the Lab API / CLI: agent None);
    the refusal says whom to ask; the promotion runs are credited to the author either way."""
    lab = quiet_lab
    win = confirmed_win(lab, "alice", LR, 3.10)
    async with as_agent(lab, "bob") as bob:
        text = await refused(lab, bob, "promote", experiment_id=win)
        assert f"#{win} is alice's; ask alice or the operator to promote it" in text, text
    assert list(lab.store.db.query("SELECT * FROM promotions")) == []

    async with as_agent(lab, "alice") as alice:
        promotion = (await ok(alice, "promote", experiment_id=win))["promotion"]
    assert promotion["agent"] == "alice" and promotion["requested_by"] == "alice"
    run = lab.experiment(promotion["run_ids"][0])
    assert run["agent"] == "alice" and run["requested_by"] == "alice"

    # The operator (agent None) may promote anyone's win; charged to nobody, credited to the author.
    other = confirmed_win(lab, "erin", WARMDOWN, 3.11)
    by_operator = lab.ladder.promote(None, other)
    run = lab.experiment(by_operator["run_ids"][0])
    assert by_operator["agent"] == "erin" and by_operator["requested_by"] is None
    assert run["agent"] == "erin" and run["requested_by"] is None


async def test_confirmation_credits_author(quiet_lab: Lab) -> None:
    """Hack: confirm another agent's experiment: the runs were recorded as the confirmer's (history,
    their agent column), and they cost nothing. Defence: anyone may confirm (useful science),
    charged to the one who asks (requested_by), while the runs, the leaderboard entry, its mean
    +- sd and the verdicts stay the author's."""
    lab = quiet_lab
    win = record(lab, "alice", "matrix lr 0.03", 3.10, variant(lab, *LR))
    lab.store.set_quota("bob", max_experiments=2)
    async with as_agent(lab, "bob") as bob:
        runs = await ok(bob, "confirm_experiment", experiment_id=win, repeats=2)
        assert [(r["agent"], r.get("requested_by"), r["kind"]) for r in runs] == [
            ("alice", "bob", "confirmation")
        ] * 2
        for run, value in zip(runs, (3.12, 3.11), strict=True):
            finish(lab, run["id"], metric_value=value)
            stored = lab.experiment(run["id"])
            assert stored["agent"] == "alice" and stored["requested_by"] == "bob"
            assert "judged with its group" in stored["metrics"]["verdict_note"]
        mine = await ok(bob, "get_history", scope="mine")
        assert {r["id"] for r in mine["rows"]} == {
            r["id"] for r in runs
        }  # bob sees what he asked for
        board = await ok(bob, "get_leaderboard")
        (entry,) = [e for e in board["entries"] if e["id"] == win]
        # the mean of the fresh-seed runs: the first run, compared first, is not in it; runs an
        # agent asked for add to the mean, but only the server's confirmation confirms an idea
        assert entry["agent"] == "alice" and entry["runs"] == 2 and not entry["confirmed"]
        assert entry["metric_value"] == round((3.12 + 3.11) / 2, 5)
        # No credit for bob: he shows only for the device time he spent (he asked for the runs).
        bobs = [a for a in board["per_agent"] if a["agent"] == "bob"]
        assert all(
            (a["experiments"], a["improvements"], a["best_id"]) == (0, 0, None) for a in bobs
        )
        # Charged to bob: his limit of 2 is used up; alice's own quota is untouched.
        text = await refused(lab, bob, "run_experiment", description="bob's own idea")
        assert "quota reached: agent bob may run 2 experiments in all" in text, text
    async with as_agent(lab, "alice") as alice:
        detail = await ok(alice, "get_experiment", experiment_id=win)
        assert detail["confirmation"]["n"] == 2 and detail["agent"] == "alice"
        await ok(alice, "run_experiment", description="alice's next idea", wait=False)


async def test_promotion_with_failed_runs_finishes(tmp_path: Path, data_dir: Path) -> None:
    """Hack (a starvation of the record, found by the review): promote when the small level's
    baseline was never measured; the finaliser formatted a None gain and raised, leaving the
    promotion `running` forever (and a run cancelled while queued never reached the finaliser at
    all). Defence: the finaliser handles an unknown gain, any error ends the promotion `failed`
    with a reason, promotions are settled whenever a run ends or is cancelled and at startup,
    re-queued runs are followed to their retry."""
    lab = make_lab(tmp_path / "home", data_dir, promotion_repeats=2, max_live_per_agent=10, **QUIET)
    try:
        assert lab.noise("S").mean is None  # the small level's baseline was never measured
        wins = [
            confirmed_win(lab, "alice", knob, 3.10 + n / 100)
            for n, knob in enumerate((LR, WARMDOWN, BETAS))
        ]
        async with as_agent(lab, "alice") as alice:
            scored, failed, cancelled = [
                (await ok(alice, "promote", experiment_id=win))["promotion"] for win in wins
            ]
            # 1. Every run ok: a transfer verdict, although the gain at S is unknown.
            for run_id in scored["run_ids"]:
                finish(lab, run_id, metric_value=3.0)
            for baseline_id in scored["baseline_ids"]:
                if lab.experiment(baseline_id)["status"] == "queued":
                    finish(lab, baseline_id, metric_value=3.2)
            ladder = await ok(alice, "get_ladder", experiment_id=wins[0])
            (done,) = ladder["promotions"]
            assert done["status"] == "done", done
            assert done["verdict"] in ("transfers", "within_noise", "does_not_transfer")
            assert "gain at S unknown" in done["note"] and done["small_gain"] is None
            assert done["large_gain"] == 0.2

            # 2. The promoted code crashes at the larger level: failed, with the reason.
            for run_id in failed["run_ids"]:
                finish(lab, run_id, status="crash")
            ladder = await ok(alice, "get_ladder", experiment_id=wins[1])
            (done,) = ladder["promotions"]
            assert (done["status"], done["verdict"]) == ("failed", "failed"), done
            assert "the promoted code failed at level M" in done["note"]
            # the note names the run and where its reason is (the reason itself may quote the
            # author's model, and the note is shown to everyone as it is)
            assert f"run #{failed['run_ids'][0]} crash" in done["note"]
            assert f"get_experiment({failed['run_ids'][0]}) shows why" in done["note"]

            # 3. Its runs cancelled while still queued: no run ever finishes, yet it ends.
            for run_id in cancelled["run_ids"]:
                await ok(alice, "cancel_experiment", experiment_id=run_id)
            ladder = await ok(alice, "get_ladder", experiment_id=wins[2])
            (done,) = ladder["promotions"]
            assert (done["status"], done["verdict"]) == ("failed", "failed"), done
            assert "cancelled" in done["note"]
    finally:
        lab.close()


async def test_default_experiment_cap_exists(tmp_path: Path, data_dir: Path) -> None:
    """Hack: with no experiment cap by default (max_experiments_per_agent None), an agent runs
    without bound: each run reads a few bits of the val set back through its score. Defence: a
    default cap a real campaign fits in (autoresearch's longest ran ~700 experiments),
    settable by the operator; it counts every run the agent asked for."""
    cap = LabSettings().max_experiments_per_agent
    assert isinstance(cap, int) and 700 <= cap <= 5000, cap
    lab = make_lab(tmp_path / "home", data_dir, **QUIET)  # no quota override: the default
    try:
        assert lab.settings.max_experiments_per_agent == cap
        files = variant(lab, *LR)
        row = {
            "agent": "mallory",
            "requested_by": "mallory",
            "kind": "experiment",
            "status": "crash",
            "description": "probe the val set",
            "code": "{}",
            "hardware": lab.hardware,
            "created_at": utc_now(),
        }
        from server.store import write_transaction

        with write_transaction(lab.store.db):
            lab.store.db.table("experiments").insert_all([row] * (cap - 1), alter=False)
        async with as_agent(lab, "mallory") as mallory:
            await ok(mallory, "write_file", path="train.py", content=files["train.py"])
            await ok(mallory, "run_experiment", description="number cap", wait=False)
            stop_live_runs(lab)
            await ok(
                mallory,
                "write_file",
                path="train.py",
                content=files["train.py"] + "# one more\n",
            )
            text = await refused(lab, mallory, "run_experiment", description="one more")
            assert f"quota reached: agent mallory may run {cap} experiments in all" in text, text
    finally:
        lab.close()


# ---------------------------------------------------------------- 6. one agent stalls the rest


def pathological_train_py(lab: Lab) -> str:
    """A large edit (~52 KB, under the editable-file cap): the baseline with thousands of
    near-identical generated lines, the kind of input whose diff vs the parent is expensive."""
    base = lab.baseline_files["train.py"]
    filler = "".join(f"_T{n % 97} = {n % 89}  # {'x' * (n % 13)}\n" for n in range(2000))
    text = base + filler
    assert 45_000 < len(text.encode()) < 64 * 1024, len(text.encode())
    return text


async def test_large_diff_does_not_hold_the_submit_lock(
    quiet_lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hack: submit a large pathological edit: its diffs (vs the parent and vs the baseline)
    and their review were computed inside the global submit lock, so every other agent's
    run_experiment waited behind it (a 24 KB file held it 50 s, another agent waited 47 s).
    Defence: the hash, the diffs and the review flags are computed before the lock (and
    bounded by server.diffs); only the quota check, the dedupe and the insert run under it.

    A's diff is held open by a gate until B's run_experiment has returned (or a 30 s deadline):
    B returning while A is still inside its diff is the property, seen through events, not
    timing. The real (bounded) diff then runs; its CPU time is measured per thread."""
    lab = quiet_lab
    real_diff = lab_module.unified_diff
    a_in_diff, b_returned = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def gated_diff(old: dict[str, str], new: dict[str, str]) -> str:
        if "_T96 = " in new.get("train.py", "") and "gate" not in seen:
            seen["gate"] = True
            a_in_diff.set()
            seen["b_returned_while_a_in_diff"] = b_returned.wait(timeout=30)
        started = time.thread_time()
        try:
            return real_diff(old, new)
        finally:
            seen["diff_cpu_seconds"] = max(
                seen.get("diff_cpu_seconds", 0.0), time.thread_time() - started
            )

    monkeypatch.setattr(lab_module, "unified_diff", gated_diff)
    async with as_agent(lab, "alice") as alice, as_agent(lab, "bob") as bob:
        await ok(alice, "write_file", path="train.py", content=pathological_train_py(lab))
        await ok(bob, "write_file", path="train.py", content=variant(lab, *LR)["train.py"])
        results: dict[str, Any] = {}

        async def alice_runs() -> None:
            results["alice"] = await ok(
                alice, "run_experiment", description="a large generated table", wait=False
            )

        async with anyio.create_task_group() as group:
            group.start_soon(alice_runs)
            deadline = time.monotonic() + 60
            while not a_in_diff.is_set():
                assert time.monotonic() < deadline, "alice's submit never reached its diff"
                await anyio.sleep(0.05)
            results["bob"] = await ok(
                bob, "run_experiment", description="matrix lr 0.03", wait=False
            )
            b_returned.set()
    assert results["bob"]["status"] == "queued" and results["alice"]["status"] == "queued"
    assert seen["b_returned_while_a_in_diff"], "bob's run_experiment waited for alice's diff"
    assert results["bob"]["id"] < results["alice"]["id"]  # bob's insert came first
    # The diff itself is bounded (server.diffs): CPU seconds of the diffing thread.
    assert seen["diff_cpu_seconds"] < 5.0, seen


# ---------------------------------------------------------------- 7. ids, resources, grace


BAD_IDS = [2**63, 2**64, 10**30, 2**63 - 1, 2**31, 0, -1]


async def test_huge_and_malformed_ids_get_clear_errors(quiet_lab: Lab) -> None:
    """Hack: ids >= 2**63 overflow SQLite's INTEGER and came back as a bare 'Error executing
    tool'; resource ids like '²' or 30 digits crashed the resource template ('Error creating
    resource'), and '１２' was read as experiment 12. Defence: every experiment-id argument
    is validated (1 to 2**31-1, in the tool schema and in the Lab), resource ids must be ASCII
    digits in that range, and any unexpected error in a resource becomes a clear message."""
    lab = quiet_lab
    win = record(lab, "alice", "matrix lr 0.03", 3.1, variant(lab, *LR))
    calls = {
        "get_experiment": lambda i: {"experiment_id": i},
        "wait_experiment": lambda i: {"experiment_id": i, "timeout_seconds": 0.1},
        "cancel_experiment": lambda i: {"experiment_id": i},
        "confirm_experiment": lambda i: {"experiment_id": i, "repeats": 1},
        "promote": lambda i: {"experiment_id": i},
        "get_ladder": lambda i: {"experiment_id": i},
        "checkout": lambda i: {"experiment_id": i},
        "combine": lambda i: {"experiment_ids": [win, i]},
    }
    async with as_agent(lab, "mallory") as mallory:
        for tool, arguments in calls.items():
            for bad in BAD_IDS:
                text = await refused(lab, mallory, tool, **arguments(bad))
                assert text != f"Error executing tool {tool}", (tool, bad)
                assert text.startswith(f"Error executing tool {tool}: "), (tool, bad, text)
                assert "2147483647" in text or "greater than or equal to 1" in text, (
                    tool,
                    bad,
                    text,
                )
        for bad in ["9" * 30, str(2**63), "１２", "²", "-1", "0", "", "abc", "1.5", "1e3", " 7"]:
            with pytest.raises(MCPError) as refusal:
                await mallory.read_resource(f"experiment://{bad}")
            message = str(refusal.value)
            assert "Error creating resource" not in message, (bad, message)
            assert "get_history" in message or "Unknown resource" in message, (bad, message)
            assert "#12 " not in message  # '１２' is not experiment 12
        for name in ["nope.py", "a" * 300, ".", "train.py ", "x\\y", "ｔｒａｉｎ.py"]:
            with pytest.raises(MCPError) as refusal:
                await mallory.read_resource(f"autoresearch://workspace/{name}")
            assert "Error creating resource" not in str(refusal.value), name
        record_text = (await mallory.read_resource(f"experiment://{win}")).contents[0].text
        assert f'"id": {win}' in record_text


@pytest.mark.e2e
@pytest.mark.slow
async def test_run_into_grace_is_flagged_never_improved(tmp_path: Path, data_dir: Path) -> None:
    """Hack: keep training past AR_BUDGET_SECONDS into the grace period the runner allows before
    its SIGTERM (training stops 1 CPU s past the budget, then exports, inside a 5 s grace):
    more steps, a better number, status ok. Defence: the runner reports over_budget_seconds; past
    the tolerance (max(1 s, 2% of the budget): an honest export may end a little late) the lab
    flags the run `over_budget` (with the seconds) and never calls it `improved`, like a
    contended run; the verdict note says why.

    1 s past, not more: a step can overshoot by most of a second and the export takes 1-3 CPU s
    on a slow machine (at 1.5 s a slow run reached the SIGTERM). The second past the budget plus
    the export is always more than the tolerance."""
    lab = make_lab(tmp_path / "home", data_dir)
    try:
        # A reference far worse than any trained model: an honest run would be a candidate.
        record(lab, "server", "a poor baseline", 9.0, dict(lab.baseline_files), kind="baseline")
        edits = [
            patches.after(patches.AFTER_CONTRACT, "# red team: mallory-grace\n"),
            (
                patches.LOOP_PROGRESS,
                "    progress = budget_used() / (BUDGET_SECONDS + 1.0)  # into the grace period\n",
            ),
        ]
        async with as_agent(lab, "mallory-grace") as mallory:
            for anchor, replacement in edits:
                await ok(mallory, "edit_file", path="train.py", old=anchor, new=replacement)
            received = await ok(mallory, "run_experiment", description="train into the grace")
            deadline = time.monotonic() + RUN_DEADLINE_SECONDS
            while received["status"] not in FINAL:
                assert time.monotonic() < deadline, f"#{received['id']} never finished"
                received = await ok(mallory, "wait_experiment", experiment_id=received["id"])
        row = lab.experiment(received["id"])
        assert received["status"] == row["status"] == "ok", received["failure_reason"]
        assert row["metric_value"] < 9.0 - 1.0  # far beyond any noise threshold ...
        flags = {flag["name"]: flag for flag in received["flags"]}
        assert "over_budget" in flags, received["flags"]
        assert flags["over_budget"]["seconds"] > over_budget_tolerance(6)
        assert received["verdict"] == row["verdict"] == "within_noise"  # ... not even a candidate
        assert lab.store.confirmation_runs(row["id"]) == []
        assert "past its 6 s budget" in received["verdict_note"], received["verdict_note"]
        assert row["disqualified"] == 1
        assert all(e["id"] != row["id"] for e in lab.leaderboard())
    finally:
        lab.close()


async def test_claims_in_bulk_do_not_hide_the_other_agents_claims(quiet_lab: Lab) -> None:
    """Hack: results list the newest open claims only (a compact answer with 100 agents), so
    mallory claims 30 ideas to push bob's claim out of every other agent's view, and to look
    like she is working on everything. Each agent shows at most 3 claims (in the briefing
    too); the total counts all."""
    from server.models import LISTED_CLAIMS_PER_AGENT

    async with (
        as_agent(quiet_lab, "bob") as bob,
        as_agent(quiet_lab, "mallory") as mallory,
        as_agent(quiet_lab, "alice") as alice,
    ):
        await ok(bob, "claim_idea", text="bob: rotary base 50k")
        for n in range(30):
            await ok(mallory, "claim_idea", text=f"mallory: idea {n}")
        history = await ok(alice, "get_history")
        briefing = await ok(alice, "get_briefing")
        answer = await ok(alice, "claim_idea", text="alice: wider MLP")
    for seen in (history, briefing, answer):
        agents = [c["agent"] for c in seen["open_claims"]]
        assert "bob" in agents
        assert agents.count("mallory") == LISTED_CLAIMS_PER_AGENT
        mallorys = [c["text"] for c in seen["open_claims"] if c["agent"] == "mallory"]
        assert all(f"mallory: idea {n}" in t for n, t in zip((29, 28, 27), mallorys, strict=True))
    assert history["open_claims_total"] == 31 and answer["open_claims_total"] == 32
