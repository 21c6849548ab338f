"""Crash recovery (issue 7): the server is killed with SIGKILL mid-run and restarted.

Asserted: when the server dies its training processes die too (no process anywhere carries
the jail marker of this server's runs directory, or sits in it); after the restart the killed
run is `interrupted` and re-queued once (a new row: retry_of set, attempt 2), the queued runs
complete, SQLite's integrity_check is ok and no row is lost or duplicated.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Any

import pytest
from support import free_port, wait_until
from test_multi_agent import TEMPLATE, Server, call, cli, connect, rows, template_home

from sandbox.jail import JAIL_DIR_ENV

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def jail_processes(runs: Path) -> list[tuple[int, str]]:
    """Processes that belong to a jail under `runs`: by the marker, their cwd or their argv."""
    marker = f"{JAIL_DIR_ENV}={runs}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                env_hit = any(e.startswith(marker) for e in fh.read().split(b"\0"))
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{name}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
            cwd = ""
            with suppress(OSError):
                cwd = os.readlink(f"/proc/{name}/cwd")
        except OSError:
            continue
        if state == "Z":
            continue  # a zombie runs nothing
        if env_hit or cwd.startswith(str(runs)) or str(runs) in cmdline:
            found.append((int(name), cmdline[:200]))
    return found


@pytest.mark.anyio
async def test_sigkill_mid_run_then_restart(tmp_path: Path) -> None:
    # The template target (numpy): the server's recovery is the same for every target, and
    # each run trains its whole 3 CPU-s budget (STEPS raised), so one is caught training.
    home = template_home(tmp_path)
    runs = (home / "runs").resolve()
    tokens = {name: cli(home, "tokens", "add", name, target=TEMPLATE) for name in ("r0", "r1")}
    cli(home, "agents", "quota", "r0", "--max-queued", "2", target=TEMPLATE)
    server = Server(home, free_port(), tmp_path / "server.log", TEMPLATE)
    server.start()
    try:
        async with AsyncExitStack() as stack:
            ids = []
            for name, k in (("r0", 0), ("r1", 0), ("r0", 1)):
                client = await connect(stack, server.url, tokens[name])
                value = f"STEPS = 10**9 + {k + 1}{name[-1]}  # to the budget; a distinct code hash"
                text = (await call(client, "read_file", path="train.py", limit=2000))["content"]
                old = next(
                    line.split("\t", 1)[1] for line in text.splitlines() if "STEPS =" in line
                )
                await call(client, "edit_file", path="train.py", old=old, new=value)
                result = await call(
                    client, "run_experiment", description=f"{name} {value}", wait=False
                )
                ids.append(result["id"])

        # Wait for a run to be training (its process is up), then kill the server outright.
        def training_id() -> int | None:
            running = rows(home, "SELECT id FROM experiments WHERE status = 'running'")
            if running and any("train.py" in cmd for _, cmd in jail_processes(runs)):
                return int(running[0]["id"])
            return None

        killed_id = wait_until(
            training_id, timeout=300, interval=0.1, message="no run reached training"
        )
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)

        # No training process outlives the server (allow the kernel a moment to deliver).
        wait_until(
            lambda: jail_processes(runs) == [],
            timeout=20,
            interval=0.2,
            message=lambda: (
                f"processes of the killed server's jails are alive: {jail_processes(runs)}"
            ),
        )
        assert (
            rows(home, "SELECT status FROM experiments WHERE id = ?", (killed_id,))[0]["status"]
            == "running"
        )

        server.start()
        killed = rows(home, "SELECT * FROM experiments WHERE id = ?", (killed_id,))[0]
        assert killed["status"] == "interrupted"
        retries = rows(home, "SELECT * FROM experiments WHERE retry_of = ?", (killed_id,))
        assert len(retries) == 1, retries
        retry = retries[0]
        assert retry["attempt"] == 2 and retry["code_hash"] == killed["code_hash"]
        assert retry["agent"] == killed["agent"]

        def live() -> list[dict[str, Any]]:
            return rows(home, "SELECT id FROM experiments WHERE status IN ('queued', 'running')")

        wait_until(
            lambda: not live(),
            timeout=900,
            interval=1.0,
            message=lambda: f"runs did not finish after the restart: {live()}",
        )
    finally:
        server.stop()

    everything = rows(
        home, "SELECT id, agent, status, code_hash, retry_of, attempt FROM experiments ORDER BY id"
    )
    assert len(everything) == 4, everything  # three submitted + one retry, nothing else
    assert len({r["id"] for r in everything}) == 4
    by_id = {r["id"]: r for r in everything}
    for experiment_id in ids:
        if experiment_id != killed_id:
            assert by_id[experiment_id]["status"] == "ok", by_id
    assert by_id[retry["id"]]["status"] == "ok", by_id
    assert sorted(r["code_hash"] for r in everything if r["id"] != retry["id"]) == sorted(
        {r["code_hash"] for r in everything}
    )
    conn = sqlite3.connect(home / "history.sqlite")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    assert jail_processes(runs) == []
