"""Many agents, one server (issue 7): three scripted agents over HTTP against the real server process.

One CPU slot, tiny budgets, on the template target (targets/template: numpy, a run of about a
second, jailed and scored like any other): sharing is the server's part and the same for every
target, and a GPT run costs ~11 CPU-s of torch imports, export and evaluation before its budget.
What is asserted, precisely:

* no lost or duplicated rows: 6 `experiment` rows (2 per agent), unique ids and code hashes,
  all ok;
* one slot: sorted by started_at, each run starts at or after the previous one finished;
* fairness: in dispatch order (started_at), for every prefix, the numbers of runs started per
  agent differ by at most one between any two agents (round r of every agent starts before
  round r + 1 of any agent): no agent waits more than one round behind another;
* queue positions reach the clients as progress notifications ("queued, position N");
* each agent's tools act on its own workspace: B's edits are invisible to A and vice versa,
  and paths out of the workspace are refused;
* A's token cannot act as B (cancelling B's queued experiment is refused, and it still runs);
* an unknown or revoked token gets 401; quotas (live runs, operator's max-experiments) refuse;
  a checkout of a missing experiment and an empty claim are refused and change nothing;
* shared learning: anyone's experiment can be checked out, the same code returns the earlier
  result instead of running again, claims appear in everyone's history.
"""

from __future__ import annotations

import itertools
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from support import TEMPLATE_TARGET, connect_over_http, free_port, wait_for_healthz

from server.store import FINAL_STATUSES

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXE = str(Path(sys.executable).with_name("autoresearch-mcp"))
TEMPLATE = TEMPLATE_TARGET.parent  # the template target's folder, as --target takes it
FINAL = frozenset(FINAL_STATUSES)
# Three agents, two runs each: enough for rounds to interleave (fairness).
AGENTS = [f"agent{i}" for i in range(3)]
RUNS = 2 * len(AGENTS)
STARTUP_S = 180.0


# ---------------------------------------------------------------- a real server process


def cli(home: Path, *args: str, target: Path | None = None) -> str:
    """Run `autoresearch-mcp ARGS --data-dir HOME [--target TARGET]`; its stdout."""
    argv = [EXE, *args, "--data-dir", str(home), *(["--target", str(target)] if target else [])]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


class Server:
    """`autoresearch-mcp serve --http` on a free port, for `target` (None: the bundled GPT)."""

    def __init__(self, home: Path, port: int, log: Path, target: Path | None = None) -> None:
        self.home, self.port, self.log, self.target = home, port, log, target
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            EXE, "serve", "--http", "--port", str(self.port), "--data-dir", str(self.home),
            "--budget", "3", "--baseline-repeats", "0", "--eval-windows", "2", "--max-live", "1",
            "--confirm-runs", "2",  # sharing is under test, not a candidate's confirmation
            *(["--target", str(self.target)] if self.target else []),
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        wait_for_healthz(self.url, self.proc, timeout=STARTUP_S, log=self.log)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


def make_home(tmp_path: Path, data_dir: Path) -> Path:
    """A home holding a copy of the GPT's prepared data."""
    home = tmp_path / "home"
    shutil.copytree(data_dir, home / "data")
    return home


def template_home(tmp_path: Path) -> Path:
    """A home with the template target's data prepared (numpy, well under a second)."""
    home = tmp_path / "home"
    cli(home, "prepare", target=TEMPLATE)
    return home


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(template_home(tmp_path), free_port(), tmp_path / "server.log", TEMPLATE)
    try:
        yield srv
    finally:
        srv.stop()


def rows(home: Path, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{home / 'history.sqlite'}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


# ---------------------------------------------------------------- MCP clients


async def connect(stack: AsyncExitStack, url: str, token: str) -> Any:
    return await connect_over_http(stack, url, token)


async def call(client: Any, tool: str, progress: Any = None, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(
        tool, arguments, read_timeout_seconds=120, progress_callback=progress
    )
    assert not result.is_error, f"{tool}({arguments}) refused: {text_of(result)}"
    return dict(result.structured_content or {})


async def refused(client: Any, tool: str, **arguments: Any) -> str:
    result = await client.call_tool(tool, arguments, read_timeout_seconds=120)
    assert result.is_error, f"{tool}({arguments}) should be refused: {result.structured_content}"
    return text_of(result)


def text_of(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


def raw_initialize(url: str, token: str) -> int:
    """The status of a bare MCP initialize request with this bearer token."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "probe", "version": "0"},
        },
    }
    response = httpx.post(
        url + "/mcp",
        json=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Accept": "application/json, text/event-stream",
        },
        timeout=60,
    )
    return response.status_code


BASE_LR = "LEARNING_RATE = 0.05"


def learning_rate(agent: int, k: int) -> str:
    """A distinct, harmless constant per agent and experiment, so that every code hash differs."""
    return f"LEARNING_RATE = 0.05{agent}{k}1"


# ---------------------------------------------------------------- the test


@pytest.mark.anyio
async def test_three_agents_share_one_slot_fairly(server: Server) -> None:
    home = server.home
    tokens = {
        name: cli(home, "tokens", "add", name, target=server.target)
        for name in [*AGENTS, "copycat"]
    }
    revoked = cli(home, "tokens", "add", "revoked-agent", target=server.target)
    cli(home, "agents", "quota", "agent0", "--max-experiments", "2", target=server.target)
    server.start()
    url = server.url

    # Identities: unknown and revoked tokens are refused with 401, a valid one is let in.
    assert raw_initialize(url, tokens["agent0"]) == 200
    assert raw_initialize(url, revoked) == 200
    assert raw_initialize(url, "ar_not-a-token") == 401
    cli(home, "tokens", "revoke", "revoked-agent", target=server.target)
    assert raw_initialize(url, revoked) == 401
    assert httpx.post(url + "/mcp", json={}, timeout=60).status_code == 401  # no token at all

    async with AsyncExitStack() as stack:
        clients = [await connect(stack, url, tokens[name]) for name in AGENTS]
        copycat = await connect(stack, url, tokens["copycat"])
        a, b = clients[0], clients[1]

        # Workspaces are private: B's edit is invisible to A and A's to B; no path escapes.
        await call(a, "edit_file", path="train.py", old=BASE_LR, new="LEARNING_RATE = 0.5")
        await call(b, "edit_file", path="train.py", old=BASE_LR, new="LEARNING_RATE = 0.7")
        a_text = (await call(a, "read_file", path="train.py", limit=2000))["content"]
        b_text = (await call(b, "read_file", path="train.py", limit=2000))["content"]
        assert "LEARNING_RATE = 0.5" in a_text and "LEARNING_RATE = 0.7" not in a_text
        assert "LEARNING_RATE = 0.7" in b_text and "LEARNING_RATE = 0.5" not in b_text
        for path in ("../agent1/train.py", "/etc/passwd", "../../workspaces/agent1/train.py"):
            await refused(a, "read_file", path=path)
            await refused(a, "write_file", path=path, content="x = 1\n")
        await refused(
            a,
            "apply_patch",
            diff="--- a/../agent1/train.py\n+++ b/../agent1/train.py\n@@ -1 +1 @@\n-x\n+y\n",
        )
        b_after = (await call(b, "read_file", path="train.py", limit=2000))["content"]
        assert b_after == b_text  # nothing A did reached B's workspace
        for client, value in ((a, "0.5"), (b, "0.7")):  # back to the baseline value
            await call(
                client,
                "edit_file",
                path="train.py",
                old=f"LEARNING_RATE = {value}",
                new=BASE_LR,
            )

        # Bad input: a missing experiment, an empty claim: refused, nothing changed.
        claims_before = rows(home, "SELECT COUNT(*) AS n FROM claims")[0]["n"]
        assert "does not exist" in await refused(a, "checkout", experiment_id=999999)
        assert "empty" in await refused(a, "claim_idea", text="   ")
        assert rows(home, "SELECT COUNT(*) AS n FROM claims")[0]["n"] == claims_before
        await call(clients[2], "claim_idea", text="weight decay sweep, tiny values")
        history = await call(a, "get_history")
        assert any(c["agent"] == "agent2" for c in history["open_claims"])

        # The experiments: every agent edits, all submit at once, then each waits and repeats.
        ids: dict[str, list[int]] = {name: [] for name in AGENTS}
        positions: list[str] = []
        first_of_b = anyio.Event()
        start_gate = anyio.Event()
        ready = 0

        async def researcher(i: int) -> None:
            nonlocal ready
            client, name = clients[i], AGENTS[i]

            async def on_progress(done: float, total: float | None, message: str | None) -> None:
                if message and "position" in message:
                    positions.append(message)

            previous = BASE_LR
            for k in range(2):
                await call(
                    client, "edit_file", path="train.py", old=previous, new=learning_rate(i, k)
                )
                previous = learning_rate(i, k)
                if k == 0:
                    ready += 1
                    if ready == len(AGENTS):
                        start_gate.set()
                    await start_gate.wait()
                result = await call(
                    client, "run_experiment", description=f"{name} try {k}: {previous}", wait=False
                )
                ids[name].append(result["id"])
                if k == 0 and i == 1:
                    first_of_b.set()
                if k == 0 and i == 0:
                    # Quota: one live run per agent (--max-live 1); the refusal queues nothing.
                    await call(
                        client, "edit_file", path="train.py", old=previous, new=previous + "1"
                    )
                    assert "still" in await refused(
                        client, "run_experiment", description="one too many"
                    )
                    await call(
                        client, "edit_file", path="train.py", old=previous + "1", new=previous
                    )
                    # Shared learning: another agent checks out B's (still queued) experiment;
                    # the same code with the same settings is not queued again.
                    await first_of_b.wait()
                    target = ids["agent1"][0]
                    await call(copycat, "checkout", experiment_id=target)
                    c_text = (await call(copycat, "read_file", path="train.py", limit=2000))[
                        "content"
                    ]
                    assert learning_rate(1, 0) in c_text
                    again = await call(
                        copycat, "run_experiment", description="same code as agent1's", wait=False
                    )
                    assert again["id"] == target and again.get("reused_from") == target, again
                    # A's token cannot act as B: cancelling B's experiment is refused.
                    assert "belongs to agent1" in await refused(
                        client, "cancel_experiment", experiment_id=ids["agent1"][0]
                    )
                while result["status"] not in FINAL:
                    result = await call(
                        client,
                        "wait_experiment",
                        on_progress,
                        experiment_id=result["id"],
                        timeout_seconds=30,
                    )
                assert result["status"] not in ("cancelled", "interrupted"), result

        with anyio.fail_after(1500):
            async with anyio.create_task_group() as group:
                for i in range(len(AGENTS)):
                    group.start_soon(researcher, i)

        # Operator quota: agent0 may run 2 experiments in all.
        await call(
            a, "edit_file", path="train.py", old=learning_rate(0, 1), new="LEARNING_RATE = 0.025"
        )
        assert "quota reached" in await refused(a, "run_experiment", description="a third one")

    # The record: 6 experiments, none lost or duplicated, all final; one slot; fair order.
    runs = rows(
        home,
        "SELECT id, agent, status, code_hash, started_at, finished_at, device FROM experiments "
        "WHERE kind = 'experiment' ORDER BY started_at, id",
    )
    assert len(runs) == RUNS, runs  # the copycat's submission queued nothing
    assert len({r["id"] for r in runs}) == RUNS and len({r["code_hash"] for r in runs}) == RUNS
    assert Counter(r["agent"] for r in runs) == dict.fromkeys(AGENTS, 2)
    assert sorted(r["id"] for r in runs) == sorted(i for v in ids.values() for i in v)
    assert all(r["status"] == "ok" for r in runs), runs  # a template run is ~1 s: none fails
    for before, after in itertools.pairwise(runs):
        assert after["started_at"] >= before["finished_at"], (before, after)  # never two at once
    started: Counter[str] = Counter()
    for r in runs:
        started[r["agent"]] += 1
        counts = [started[name] for name in AGENTS]
        assert max(counts) - min(counts) <= 1, [x["agent"] for x in runs]
    assert positions, "no queue position reached a waiting client"
    ok = sum(r["status"] == "ok" for r in runs)
    print(
        f"\n{RUNS} runs, {ok} ok; dispatch order: {[r['agent'][-1] for r in runs]}; positions seen: {sorted(set(positions))[:6]}"
    )
