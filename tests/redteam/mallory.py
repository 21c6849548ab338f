"""Mallory, the adversarial agent: drives the real MCP tools (in-memory client) against a real Lab."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

from mcp import Client
from support import wait_until_finished

from server.app import build_server
from server.lab import Lab, LabSettings
from server.store import FINAL_STATUSES

from .patches import AFTER_CONTRACT, Edit, after, unified_diff

RUN_DEADLINE_SECONDS = 900  # generous: the machine is shared; never a timing assertion
FINAL = frozenset(FINAL_STATUSES)


def make_lab(home: Path, data_dir: Path, **overrides: Any) -> Lab:
    """A lab on a copy of the session's prepared data: 6 s budget, 4 eval windows, no baseline runs.

    The budget is counted in CPU seconds, one thread per run (two CPU slots): on the shared
    2-core machine these tests run on (load average 6-10), a 6 s WALL-clock budget is not
    enough for an honest run to import torch and export its model, so honest runs time out.
    CPU seconds do not count the neighbours' share; one thread avoids OpenMP spin-waits
    inflating CPU time under contention. contended_share=0: the verdicts must come from the
    defences under test, not from the machine's load.
    """
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "data").exists():
        shutil.copytree(data_dir, home / "data")
    settings = dict(
        home=home,
        budget_seconds=6,
        budget_kind="cpu",
        cpu_slots=2,
        baseline_repeats=0,
        eval_windows=4,
        call_wait_seconds=120,
        max_live_per_agent=1,
        contended_share=0.0,
    )
    if "contended_share_cpu_budget" in {f.name for f in dataclasses.fields(LabSettings)}:
        settings["contended_share_cpu_budget"] = 0.0
    settings.update(overrides)
    return Lab(LabSettings(**settings))


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call a tool; fail the test with the server's message if it refused."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, f"{tool} refused: {result.content}"
    return result.structured_content


async def run_hack(
    lab: Lab,
    agent: str,
    description: str,
    edits: list[Edit] = (),  # type: ignore[assignment]
    *,
    as_diff: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply `edits` to the agent's workspace (edit_file, or one apply_patch), run it, wait until final.

    Returns (what the agent received from the last run/wait call, the stored row).
    """
    # A comment naming the agent makes every hack's code unique (no reuse of an earlier run's
    # result); comments are ignored by the diff review, so a seed-only change stays seed-only.
    edits = [after(AFTER_CONTRACT, f"# red team: {agent}\n"), *edits]
    async with Client(build_server(lab, default_agent=agent)) as client:
        await call(client, "checkout", ref="baseline")
        if as_diff:
            current = (await call(client, "read_file", path="train.py", limit=2000))["content"]
            old = "".join(line.split("\t", 1)[1] + "\n" for line in current.splitlines())
            new = old
            for anchor, replacement in edits:
                assert new.count(anchor) == 1, f"patch anchor not found once: {anchor!r}"
                new = new.replace(anchor, replacement)
            await call(client, "apply_patch", diff=unified_diff(old, new))
        else:
            for anchor, replacement in edits:
                await call(client, "edit_file", path="train.py", old=anchor, new=replacement)
        received = await call(client, "run_experiment", description=description, wait=True)
        deadline = time.monotonic() + RUN_DEADLINE_SECONDS
        # A candidate's verdict waits for the server's fresh-seed runs: wait for it too.
        while received["status"] not in FINAL or received.get("verdict") == "candidate":
            assert time.monotonic() < deadline, f"experiment #{received['id']} never finished"
            received = await call(client, "wait_experiment", experiment_id=received["id"])
        assert received.get("reused_from") is None, "the run was reused: make the patch unique"
        return received, lab.experiment(received["id"])


async def experiment_log(lab: Lab, agent: str, experiment_id: int) -> str:
    """The log tail as the agent can read it (get_experiment include_log)."""
    async with Client(build_server(lab, default_agent=agent)) as client:
        detail = await call(client, "get_experiment", experiment_id=experiment_id, include_log=True)
        return detail.get("log_tail") or ""


def wait_rows(lab: Lab, ids: list[int]) -> list[dict[str, Any]]:
    """The rows of these experiments once all have finished (a deadline per run, never timing)."""
    return wait_until_finished(
        lab, ids, timeout=RUN_DEADLINE_SECONDS * max(1, len(ids)), interval=1
    )
