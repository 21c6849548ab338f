"""Concurrent agents against the real HTTP server: tool-call throughput and latency (issue 7).

Starts `autoresearch-mcp serve --http` on a fresh data directory (no baseline runs, no
training), gives each agent its own token, and has 1, 4 and 16 agents make a fixed number of
tool calls each (read_file, get_history, list_files in turn) over MCP streamable HTTP, all at
once. Prints calls/s and p50/p95 latency per concurrency. Goal: p95 <= 50 ms at 16 agents.

    .venv/bin/python bench/agents.py [--calls 40] [--agents 1 4 16] [--data PREPARED_DATA_DIR]

The clients run in one asyncio process beside the server: on a small, shared machine their
own CPU time is part of the latency measured (the figures are an upper bound). On 2 cores
the server is the bottleneck at 16 agents (~1.6-1.8 ms of server CPU per call, one process):
p95 is then about the queue of 16 calls ahead, so server CPU per call is what to cut.

`--history 100000` (issue 21): the large mode. Seeds a fresh data home with that many
experiments (100 agents; ok, crash, timeout, cancelled, integrity_fail and interrupted runs;
every verdict; descriptions, one-constant diffs, the full code, change fingerprints,
confirmation runs, claims) through server.store.bulk, starts the same HTTP server on it and
drives `--agent-count` (100) concurrent agents, one token each, each making `--calls` tool
calls from a realistic mix (MIX below) with an exponential think time of mean `--think`
seconds between calls (open-loop per agent: ~agents/think calls/s offered), then a closed-loop
saturation run (no think time). Measures p50/p95/max per tool, calls/s, the dashboard (GET /
and the JSON API the page polls, viewer token) idle and under load, the server's RSS, and
that no row was lost or duplicated, and the CPU seconds the server and the clients spent in each
run (who the bottleneck is). `--profile` also times every tool in-process under
cProfile (where the time goes).

Beside the 100 agents, one more agent runs in a client process of its own (the probe: each read
tool in turn, one call at a time, 0.5 s apart): what an agent sees whose client is not shared
with 99 others. The server's own time per tool comes from GET /api/timings. `--split-cores`
pins the server to one core and the clients to the others; `--client-processes N` spreads the
agents over N client processes.

    .venv/bin/python bench/agents.py --history 100000 [--agent-count 100] [--calls 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/agents.py`: the repository's packages

from datetime import UTC, datetime, timedelta

from server.auth import issue_token
from tests.support import free_port, wait_for_healthz

EXE = str(Path(sys.executable).with_name("autoresearch-mcp"))
CALLS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("read_file", {"path": "train.py", "limit": 60}),
    ("get_history", {"limit": 10}),
    ("list_files", {}),
)


def start_server(home: Path, port: int, cores: set[int] | None = None) -> subprocess.Popen[bytes]:
    """The HTTP server on `home`, on the CPU cores `cores` only where given (--split-cores)."""
    log = open(home / "server.log", "ab")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [
            EXE,
            "serve",
            "--http",
            "--port",
            str(port),
            "--data-dir",
            str(home),
            "--baseline-repeats",
            "0",
            "--budget",
            "3",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
    )
    try:
        wait_for_healthz(f"http://127.0.0.1:{port}", proc, timeout=180, log=home / "server.log")
    except AssertionError as failure:
        proc.kill()
        raise SystemExit(str(failure)) from None
    return proc


async def agent(
    url: str,
    token: str,
    calls: int,
    latencies: list[float],
    gate: asyncio.Event,
    ready: list[str],
) -> None:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=120)
        )
        client: Any = await stack.enter_async_context(
            Client(streamable_http_client(url + "/mcp", http_client=http))
        )
        await client.call_tool("list_files", {})  # warm: workspace created, session open
        ready.append(token)
        await gate.wait()
        for n in range(calls):
            name, arguments = CALLS[n % len(CALLS)]
            t0 = time.perf_counter()
            result = await client.call_tool(name, arguments)
            latencies.append(time.perf_counter() - t0)
            if result.is_error:
                raise RuntimeError(f"{name} failed: {result.content}")


async def measure(url: str, tokens: list[str], calls: int) -> dict[str, float]:
    latencies: list[float] = []
    gate = asyncio.Event()
    ready: list[str] = []
    tasks = [asyncio.create_task(agent(url, t, calls, latencies, gate, ready)) for t in tokens]
    while len(ready) < len(tokens):  # every session open and warm before the clock starts
        if any(t.done() and t.exception() for t in tasks):
            await asyncio.gather(*tasks)
        await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    gate.set()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
    return {
        "calls": len(lat),
        "wall_s": wall,
        "calls_per_s": len(lat) / wall,
        "p50_ms": statistics.median(lat) * 1000,
        "p95_ms": q[94] * 1000,
        "max_ms": lat[-1] * 1000,
    }


# ---------------------------------------------------------------- 100 agents, 10^5 experiments

AGENT_COUNT = 100
Sample = tuple[str, float, bool]  # (tool, seconds, the session's first call of the tool)
# (tool, weight): what an agent in the research loop calls between runs. The arguments are
# drawn per call by `arguments_for` (random ids over the whole record, a query, a claim).
MIX: tuple[tuple[str, int], ...] = (
    ("get_history", 20),  # half with a full-text query
    ("get_leaderboard", 12),
    ("get_experiment", 15),
    ("read_file", 12),
    ("list_files", 6),
    ("get_briefing", 10),
    ("similar_experiments", 10),
    ("claim_idea", 5),
    ("wait_experiment", 10),
)
IDEAS = (
    "warmdown {x} -> 0.7: longer decay helps at short budgets",
    "RoPE base 10k -> {x}k: longer wavelengths for the attention",
    "matrix lr 0.02 -> 0.0{x}: Muon tolerates more",
    "batch size 8 -> {x}: more tokens per step",
    "weight decay 0 -> 0.{x} on the embeddings",
    "ReLU squared -> GELU in the MLP, variant {x}",
    "QK-norm scale {x} with a lower head lr",
    "embedding lr x{x} and a shorter warmup",
    "MLP ratio {x}: wider hidden layer",
    "final lr fraction 0.{x} instead of zero",
)
QUERIES = ("warmdown", "rope base", "weight decay", "gelu", "matrix lr", "mlp ratio", "embedding")
# (status, verdict, share of the agents' experiments)
OUTCOMES = (
    ("ok", "worse", 0.40),
    ("ok", "within_noise", 0.36),
    ("ok", "improved", 0.05),
    ("crash", "failed", 0.10),
    ("timeout", "failed", 0.04),
    ("cancelled", None, 0.03),
    ("integrity_fail", "failed", 0.01),
    ("interrupted", None, 0.01),
)
CONSTANTS = (
    "HEAD_LR",
    "WEIGHT_DECAY",
    "WARMUP_FRAC",
    "WARMDOWN_FRAC",
    "FINAL_LR_FRAC",
    "MLP_RATIO",
    "ROPE_BASE",
)


def variants(baseline: str, count: int, rng: random.Random) -> list[dict[str, Any]]:
    """`count` one-constant changes of train.py: code JSON, diff and change fingerprint each."""
    from server.lab import unified_diff
    from server.similarity import change_to_record, describe_change

    lines = baseline.splitlines(keepends=True)
    places = {
        name: next(i for i, line in enumerate(lines) if line.startswith(f"{name} = "))
        for name in CONSTANTS
    }
    out = []
    for n in range(count):
        name = CONSTANTS[n % len(CONSTANTS)]
        changed = list(lines)
        value = round(rng.uniform(0.001, 0.9), 4) if name != "MLP_RATIO" else 2 + n % 5
        changed[places[name]] = f"{name} = {value}  # variant {n}\n"
        files = {"train.py": "".join(changed)}
        diff = unified_diff({"train.py": baseline}, files)
        change = describe_change(files, {"train.py": baseline})
        out.append(
            {
                "code": json.dumps(files),
                "code_hash": hashlib.sha256(files["train.py"].encode()).hexdigest(),
                "diff": diff,
                "change_fingerprint": change.fingerprint,
                "change_edits": json.dumps(change_to_record(change)),
            }
        )
    return out


def seed_record(home: Path, experiments: int, agents: list[str]) -> dict[str, Any]:
    """Fill a fresh data home with `experiments` rows (about 4% confirmation runs) and claims."""
    from server.lab import Lab, LabSettings
    from server.store import bulk

    started = time.perf_counter()
    reuse = (home / "history.sqlite").exists()
    lab = Lab(LabSettings(home=home, budget_seconds=3, baseline_repeats=0, start_scheduler=False))
    rng = random.Random(21)
    baseline = lab.baseline_files["train.py"]
    pool = variants(baseline, 300, rng)
    common = {
        "hardware": lab.hardware,
        "budget_seconds": lab.budget_seconds,
        "budget_kind": lab.settings.resolved_budget_kind(),
        "scale": "S",
        "device": "cpu",
        "isolation": "bwrap",
        "torch_version": "2.x",
        "flags": "[]",
        "hashes": "{}",
    }
    weights = [w for _, _, w in OUTCOMES]
    improved: list[int] = []
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def rows() -> Any:
        for n in range(1, experiments + 1):
            when = (t0 + timedelta(seconds=30 * n)).isoformat(timespec="seconds")
            if n == 1:
                status, verdict, kind, agent, variant = "ok", "baseline", "baseline", "server", None
            elif improved and rng.random() < 0.04:  # a confirmation run of an earlier win
                status, verdict, kind = "ok", None, "confirmation"
                target = rng.choice(improved[-50:])
                agent, variant = agents[target % len(agents)], pool[target % len(pool)]
            else:
                status, verdict, _ = rng.choices(OUTCOMES, weights)[0]
                kind, agent, variant = "experiment", agents[n % len(agents)], rng.choice(pool)
                if verdict == "improved":
                    improved.append(n)
            ok = status == "ok"
            val = round(1.9 - n * 2e-6 + rng.gauss(0, 0.01), 6) if ok else None
            row: dict[str, Any] = {
                "id": n,
                "agent": agent,
                "requested_by": None if agent == "server" else agent,
                "kind": kind,
                "status": status,
                "verdict": verdict,
                "description": rng.choice(IDEAS).format(x=rng.randint(1, 9))
                + f" ({agent}, try {n})",
                "parent_id": max(1, n - rng.randint(1, 500)) if n > 1 else None,
                "confirms_id": target if kind == "confirmation" else None,
                "metric_value": val,
                "delta_parent": round(rng.gauss(0, 0.01), 6) if ok else None,
                "metrics": json.dumps({"val_bpb": val, "steps": 400}) if ok else None,
                "train_seconds": 3.0,
                "eval_seconds": 0.8,
                "total_seconds": 4.1 if status not in ("cancelled",) else 0.0,
                "cpu_seconds": 6.0,
                "peak_memory_mb": 420.0,
                "seed": rng.randint(0, 2**31),
                "failure_reason": None if ok or status == "cancelled" else "RuntimeError: boom",
                "log_tail": "step 100 | loss 3.21\n" * 12,
                "disqualified": 0,
                # an interrupted first attempt would be re-queued (and trained) at start-up
                "attempt": 2 if status == "interrupted" else 1,
                "created_at": when,
                "started_at": when,
                "finished_at": when,
                **common,
            }
            if variant is not None:
                row.update(
                    code=variant["code"],
                    code_hash=variant["code_hash"],
                    diff_parent=variant["diff"],
                    diff_baseline=variant["diff"],
                    change_fingerprint=variant["change_fingerprint"],
                    change_edits=variant["change_edits"],
                )
            else:
                row.update(
                    code=json.dumps({"train.py": baseline}), diff_parent="", diff_baseline=""
                )
            yield row

    if reuse:  # a home seeded before (--home): only new tokens
        count, claims = bulk.table_count(lab.store, "experiments"), 0
    else:
        count = bulk.insert_experiments(lab.store, rows())
    now = datetime.now(UTC)
    claims = (
        0
        if reuse
        else bulk.insert_claims(
            lab.store,
            [
                {
                    "agent": agents[n % len(agents)],
                    "text": rng.choice(IDEAS).format(x=n % 9 + 1),
                    "created_at": (now - timedelta(minutes=n)).isoformat(timespec="seconds"),
                    "expires_at": (now + timedelta(minutes=60 - n % 120)).isoformat(
                        timespec="seconds"
                    ),
                    "released_at": None if n % 3 else now.isoformat(timespec="seconds"),
                }
                for n in range(2000)
            ],
        )
    )
    for name in agents:
        lab.store.ensure_agent(name)
    tokens = {name: issue_token(lab.store, name) for name in agents}
    viewer = issue_token(lab.store, "bench-viewer", role="viewer")
    seconds = time.perf_counter() - started
    size = (home / "history.sqlite").stat().st_size
    return {
        "lab": lab,
        "tokens": tokens,
        "viewer": viewer,
        "seed_s": seconds,
        "experiments": count,
        "claims": claims,
        "db_mb": size / 2**20,
        "improved": improved,
    }


def arguments_for(tool: str, rng: random.Random, top_id: int, agent_name: str) -> dict[str, Any]:
    """One call's arguments: random ids over the whole record, a query half the time."""
    if tool == "get_history":
        return {"query": rng.choice(QUERIES)} if rng.random() < 0.5 else {"limit": 20}
    if tool == "get_leaderboard":
        return {}
    if tool in ("get_experiment", "wait_experiment"):
        extra = {"timeout_seconds": 1.0} if tool == "wait_experiment" else {}
        return {"experiment_id": rng.randint(1, top_id), **extra}
    if tool == "read_file":
        return {"path": "train.py", "limit": 60, "offset": rng.choice((1, 61, 121))}
    if tool == "similar_experiments":
        return {"description": rng.choice(IDEAS).format(x=rng.randint(1, 9))}
    if tool == "claim_idea":
        return {"text": f"{agent_name}: " + rng.choice(IDEAS).format(x=rng.randint(1, 9))}
    return {}


async def mixed_agent(
    url: str,
    token: str,
    agent_name: str,
    calls: int,
    think: float,
    top_id: int,
    seed: int,
    samples: list[Sample],
    claims_seen: list[int],
    gate: asyncio.Event,
    ready: list[str],
) -> None:
    """One agent: a session, then `calls` tool calls from MIX with exponential think times.
    Each sample says whether it was the session's first call of its tool: the SDK's client
    compiles a tool's output schema on that call (see `schema_compile_table`)."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    rng = random.Random(seed)
    tools, weights = zip(*MIX, strict=True)
    done = 0
    while done < calls:
        try:
            async with AsyncExitStack() as stack:
                # uvicorn closes a connection idle for 5 s; the client lets go first.
                http = await stack.enter_async_context(
                    httpx2.AsyncClient(
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=300,
                        limits=httpx2.Limits(keepalive_expiry=2.0),
                    )
                )
                client: Any = await stack.enter_async_context(
                    Client(streamable_http_client(url + "/mcp", http_client=http))
                )
                if token not in ready:
                    ready.append(token)
                await gate.wait()
                used: set[str] = set()  # a new session compiles every schema again
                while done < calls:
                    if think:
                        await asyncio.sleep(rng.expovariate(1 / think))
                    tool = rng.choices(tools, weights)[0]
                    arguments = arguments_for(tool, rng, top_id, agent_name)
                    t0 = time.perf_counter()
                    done += 1  # a call lost with its connection is not retried
                    result = await client.call_tool(tool, arguments)
                    samples.append((tool, time.perf_counter() - t0, tool not in used))
                    used.add(tool)
                    if result.is_error:
                        raise RuntimeError(f"{tool}({arguments}) failed: {result.content}")
                    if tool == "claim_idea":
                        claims_seen.append(int(result.structured_content["claim"]["id"]))
        except RuntimeError:
            raise
        except Exception as lost:  # the connection dropped: counted, then a new session
            TRANSPORT_ERRORS.append(f"{agent_name}: {type(lost).__name__}: {lost}"[:200])


TRANSPORT_ERRORS: list[str] = []

PROBE_PAUSE_SECONDS = 0.5
PROBE_TOOLS = tuple(tool for tool, _ in MIX if tool != "claim_idea")  # the row checks count claims


async def probe_calls(url: str, token: str, top_id: int, out: Path) -> None:
    """One more agent in a process of its own: each tool of the mix in turn, one call at a time,
    PROBE_PAUSE_SECONDS apart, until SIGTERM; then its (tool, seconds) samples into `out`. What
    an agent whose client has a core to itself sees, beside the 100 sharing one process."""
    import signal

    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    rng = random.Random(7)
    samples: list[Sample] = []
    used: set[str] = set()
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=300) as http,
        Client(streamable_http_client(url + "/mcp", http_client=http)) as client,
    ):
        await client.call_tool("list_files", {})  # warm: workspace made, schemas listed
        print("ready", flush=True)
        n = 0
        while not stop.is_set():
            tool = PROBE_TOOLS[n % len(PROBE_TOOLS)]
            arguments = arguments_for(tool, rng, top_id, "probe")
            t0 = time.perf_counter()
            result = await client.call_tool(tool, arguments)
            samples.append((tool, time.perf_counter() - t0, tool not in used))
            used.add(tool)
            if result.is_error:
                raise RuntimeError(f"{tool}({arguments}) failed: {result.content}")
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PROBE_PAUSE_SECONDS)
    out.write_text(json.dumps(samples))


class Probe:
    """`probe_calls` in a subprocess for the length of a `with` block; `.samples` after it."""

    def __init__(self, url: str, token: str, top_id: int, out: Path) -> None:
        self.out = out
        self.command = [
            sys.executable, __file__, "--probe-client", url, token, str(top_id), str(out),
        ]  # fmt: skip
        self.samples: list[Sample] = []

    def __enter__(self) -> Probe:
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            self.process.kill()
            raise SystemExit("the probe client did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        if self.process.wait(60) != 0:
            raise SystemExit(f"the probe client failed ({self.process.returncode})")
        self.samples = [(tool, s, first) for tool, s, first in json.loads(self.out.read_text())]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_agents(
    url: str,
    agents: list[tuple[int, str, str]],
    calls: int,
    think: float,
    top_id: int,
    started: Callable[[], Awaitable[None]],
) -> dict[str, Any]:
    """The agents (seed, name, token) in this process: their sessions opened first, then
    `started()` awaited, then their calls. Their samples and the claim ids answered."""
    samples: list[Sample] = []
    claims_seen: list[int] = []
    gate = asyncio.Event()
    ready: list[str] = []
    tasks = [
        asyncio.create_task(
            mixed_agent(
                url, token, name, calls, think, top_id, n, samples, claims_seen, gate, ready
            )
        )
        for n, name, token in agents
    ]
    while len(ready) < len(agents):
        if any(t.done() and t.exception() for t in tasks):
            await asyncio.gather(*tasks)
        await asyncio.sleep(0.05)
    await started()
    gate.set()
    await asyncio.gather(*tasks)
    return {"samples": samples, "claims_seen": claims_seen, "errors": list(TRANSPORT_ERRORS)}


def agents_process(
    url: str,
    agents: list[tuple[int, str, str]],
    calls: int,
    think: float,
    top_id: int,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    """A client process of its own for some of the agents (--client-processes): it says `ready`
    once their sessions are open, starts on `go`, and puts its samples and the CPU seconds it
    spent from `go` on into `results`."""
    cpu_at_go = 0.0

    async def started() -> None:
        nonlocal cpu_at_go
        ready.put(os.getpid())
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        cpu_at_go = time.process_time()

    out = asyncio.run(run_agents(url, agents, calls, think, top_id, started))
    out["cpu_s"] = time.process_time() - cpu_at_go
    results.put(out)


async def drive(
    url: str,
    tokens: dict[str, str],
    calls: int,
    think: float,
    top_id: int,
    viewer: str,
    probe: Probe | None = None,
    processes: int = 1,
) -> dict[str, Any]:
    """All agents at once (sessions opened first), in this process or spread over `processes`
    client processes; a dashboard poller and `probe` beside them."""
    agents = [(n, name, token) for n, (name, token) in enumerate(tokens.items())]
    loop = asyncio.get_running_loop()
    clock: dict[str, float] = {}
    agents_done: asyncio.Future[None] = loop.create_future()
    dashboard: asyncio.Task[dict[str, list[float]]] | None = None

    async def started() -> None:
        nonlocal dashboard
        if probe:
            probe.__enter__()
        clock["t0"], clock["began"] = time.perf_counter(), time.time()
        dashboard = asyncio.create_task(poll_dashboard(url, viewer, agents_done))

    try:
        if processes <= 1:
            outs = [await run_agents(url, agents, calls, think, top_id, started)]
        else:
            import multiprocessing

            context = multiprocessing.get_context("spawn")
            ready, results, go = context.Queue(), context.Queue(), context.Event()
            workers = [
                context.Process(
                    target=agents_process,
                    args=(url, agents[k::processes], calls, think, top_id, ready, go, results),
                )
                for k in range(processes)
            ]
            for worker in workers:
                worker.start()
            for _ in workers:
                await loop.run_in_executor(None, ready.get, True, 600)
            await started()
            go.set()
            outs = await asyncio.gather(*(loop.run_in_executor(None, results.get) for _ in workers))
            for worker in workers:
                worker.join(60)
        wall = time.perf_counter() - clock["t0"]
        agents_done.set_result(None)
    finally:
        if probe and "t0" in clock:
            probe.__exit__(None, None, None)
    assert dashboard is not None
    if processes > 1:  # the client processes' own lists (this process's is already filled)
        TRANSPORT_ERRORS.extend(error for out in outs for error in out["errors"])
    return {
        "samples": [sample for out in outs for sample in out["samples"]],
        "probe": {"samples": probe.samples, "wall_s": wall} if probe else None,
        "wall_s": wall,
        "claims_seen": [claim for out in outs for claim in out["claims_seen"]],
        "dashboard": await dashboard,
        "server_side": await server_timings(url, viewer, clock["began"]),
        "client_processes_cpu_s": sum(out.get("cpu_s", 0.0) for out in outs),
    }


async def server_timings(url: str, viewer: str, since: float) -> dict[str, Any]:
    """The server's own time per tool for the calls since `since` (GET /api/timings)."""
    import httpx2

    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {viewer}"}) as http:
        response = await http.get(url + "/api/timings", params={"since": since}, timeout=60)
    response.raise_for_status()
    return dict(response.json())


DASHBOARD_PATHS = ("/", "/api/chart", "/api/leaderboard", "/api/queue")


async def poll_dashboard(
    url: str, viewer: str, until: asyncio.Future[Any] | None, rounds: int = 5
) -> dict[str, list[float]]:
    """The page and the JSON API it loads, with a viewer token: `rounds` times, or until done."""
    import httpx2

    times: dict[str, list[float]] = {path: [] for path in DASHBOARD_PATHS}
    async with httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {viewer}"}, timeout=300
    ) as http:
        n = 0
        while (until is None and n < rounds) or (until is not None and not until.done()):
            for path in DASHBOARD_PATHS:
                t0 = time.perf_counter()
                response = await http.get(url + path)
                times[path].append(time.perf_counter() - t0)
                if response.status_code != 200:
                    raise RuntimeError(f"GET {path}: {response.status_code}")
            n += 1
            if until is not None:
                await asyncio.sleep(1.0)
    return times


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive_measured(server_pid: int, *args: Any) -> dict[str, Any]:
    """`drive(*args)`, with the CPU seconds the server process and this one (the clients, the
    dashboard poller and the churn thread) spent during it: where the machine's cores went."""
    server_before, clients_before = process_cpu_seconds(server_pid), time.process_time()
    run = asyncio.run(drive(*args))
    run["server_cpu_s"] = process_cpu_seconds(server_pid) - server_before
    run["clients_cpu_s"] = time.process_time() - clients_before + run["client_processes_cpu_s"]
    return run


def cpu_line(run: dict[str, Any]) -> str:
    """CPU per call and cores used, server and clients: who the bottleneck is."""
    calls, wall = len(run["samples"]), run["wall_s"]
    return (
        f"CPU during the run: server {run['server_cpu_s']:.1f} s "
        f"({run['server_cpu_s'] / wall:.2f} cores, {1000 * run['server_cpu_s'] / calls:.1f} ms "
        f"per call); clients {run['clients_cpu_s']:.1f} s ({run['clients_cpu_s'] / wall:.2f} "
        f"cores, {1000 * run['clients_cpu_s'] / calls:.1f} ms per call); "
        f"{os.cpu_count()} cores in all"
    )


def goal_ms(tool: str) -> int:
    """The issue's p95 goal for a tool: 50 ms for the two every agent polls, else 100 ms."""
    return 50 if tool in ("get_history", "get_leaderboard") else 100


def verdict(p95: float | None, goal: int) -> str:
    return "-" if p95 is None else f"{'met' if p95 <= goal else 'MISSED'} (<= {goal})"


def tool_table(title: str, run: dict[str, Any]) -> list[str]:
    """p50/p95/max per tool over every call, then p95 over the calls after each session's first
    call of the tool: the first one also pays the SDK client's one-off compile of the tool's
    output schema (`schema_compile_table`), which a long session pays once."""
    rows: dict[str, list[tuple[float, bool]]] = {}
    for tool, seconds, first in run["samples"]:
        rows.setdefault(tool, []).append((seconds * 1000, first))
    rows_all = [*sorted(rows.items()), ("**all**", [v for vs in rows.values() for v in vs])]
    calls = len(run["samples"])
    lines = [
        f"### {title}: {calls} calls in {run['wall_s']:.1f} s = {calls / run['wall_s']:.1f} calls/s",
        "",
        "| tool | calls | p50 ms | p95 ms | max ms | goal | first calls | later calls: p95 ms "
        "| later calls: goal |",
        "|---|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for tool, values in rows_all:
        goal = 100 if tool == "**all**" else goal_ms(tool)
        every = [ms for ms, _ in values]
        later = [ms for ms, first in values if not first]
        p95, later_p95 = quantile(every, 0.95), quantile(later, 0.95) if later else None
        lines.append(
            f"| {tool} | {len(every)} | {quantile(every, 0.5):.1f} | {p95:.1f} | {max(every):.1f} "
            f"| {verdict(p95, goal)} | {len(every) - len(later)} | "
            f"{'-' if later_p95 is None else f'{later_p95:.1f}'} | {verdict(later_p95, goal)} |"
        )
    return lines


def schema_compile_ms(url: str, token: str) -> dict[str, tuple[int, float]]:
    """What the SDK's client spends once per session and tool compiling the tool's output schema
    (mcp.client.session `_output_schema_validator`: jsonschema's check_schema against the
    2020-12 metaschema, then the validator): (schema bytes, CPU ms) for each tool of MIX,
    measured in this process on the schemas this server lists, before the runs."""
    from jsonschema.validators import validator_for
    from referencing import Registry

    listed = asyncio.run(list_tools(url, token))
    costs: dict[str, tuple[int, float]] = {}
    for name, _ in MIX:
        schema = listed[name]
        t0 = time.process_time()
        for _ in range(5):
            cls = validator_for(schema)
            cls.check_schema(schema)
            cls(schema, registry=Registry())
        costs[name] = (len(json.dumps(schema)), (time.process_time() - t0) / 5 * 1000)
    return costs


def compile_lines(run: dict[str, Any], compile_ms: dict[str, tuple[int, float]]) -> list[str]:
    """The run's first calls per tool and the client CPU their schema compiles took (estimated
    from `schema_compile_ms`): the part of the clients' CPU a long session pays only once."""
    firsts: dict[str, int] = {}
    for tool, _, first in run["samples"]:
        firsts[tool] = firsts.get(tool, 0) + first
    spent = sum(n * compile_ms[tool][1] for tool, n in firsts.items()) / 1000
    lines = [
        "The SDK client compiles each tool's output schema on a session's first call of it "
        f"(CPU in this process, before the runs): ~{spent:.1f} s of the clients' "
        f"{run['clients_cpu_s']:.1f} s went to the {sum(firsts.values())} first calls' compiles.",
        "",
        "| tool | schema bytes | compile ms | first calls in the run |",
        "|---|---:|---:|---:|",
    ]
    for tool, (size, ms) in compile_ms.items():
        lines.append(f"| {tool} | {size} | {ms:.1f} | {firsts.get(tool, 0)} |")
    return lines


async def list_tools(url: str, token: str) -> dict[str, dict[str, Any]]:
    """The output schema of every tool this server lists, through the SDK client."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
        Client(streamable_http_client(url + "/mcp", http_client=http)) as client,
    ):
        listed = await client.list_tools()
    return {tool.name: tool.output_schema or {} for tool in listed.tools}


def split_cores() -> tuple[set[int], set[int]]:
    """The first usable core for the server, the others for the clients (--split-cores)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("--split-cores needs at least 2 CPU cores")
    return {cores[0]}, set(cores[1:])


def probe_table(run: dict[str, Any]) -> list[str]:
    """What the probe (one more agent, a process of its own) saw during the same run."""
    title = (
        f"One more agent in a process of its own (the probe: each read tool in turn, one call at "
        f"a time, {PROBE_PAUSE_SECONDS:g} s apart), during the same run"
    )
    return [f"{title}:", "", *tool_table(title, run["probe"])[2:]] if run.get("probe") else []


def server_side_table(run: dict[str, Any]) -> list[str]:
    """The same calls as the server timed them (server/timings.py): arrival at the MCP endpoint
    to the answer's last byte. The rest of a client's figure is the client's own time."""
    lines = [
        "Server side (GET /api/timings: arrival at /mcp to the answer's last byte; the agents' "
        "and the probe's calls):",
        "",
        "| tool | calls | p50 ms | p95 ms | max ms | goal |",
        "|---|---:|---:|---:|---:|---|",
    ]
    figures = run["server_side"]
    rows = [*figures["tools"], *([figures["all"]] if figures["all"] else [])]
    for row in rows:
        goal = 100 if row["tool"] == "all" else goal_ms(row["tool"])
        name = "**all**" if row["tool"] == "all" else row["tool"]
        lines.append(
            f"| {name} | {row['calls']} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | "
            f"{row['max_ms']:.1f} | {verdict(row['p95_ms'], goal)} |"
        )
    return lines


def dashboard_table(title: str, times: dict[str, list[float]]) -> list[str]:
    lines = [f"### {title}", "", "| path | requests | p50 ms | max ms |", "|---|---:|---:|---:|"]
    for path, values in times.items():
        ms = [v * 1000 for v in values]
        if ms:
            lines.append(f"| {path} | {len(ms)} | {quantile(ms, 0.5):.1f} | {max(ms):.1f} |")
    return lines


def profile_tools(lab: Any, top_id: int, out: list[str]) -> None:
    """Each tool of MIX 20 times in-process (MCPServer.call_tool, no transport) under cProfile:
    the server's own time per call, and the five functions that took most of it.

    Tools that run their work in a worker thread (server.tool_support.in_thread) run it inline
    here: cProfile sees only the thread it was enabled in, and the own-code column was empty
    for every such tool."""
    import cProfile
    import io
    import pstats
    from unittest import mock

    import anyio.to_thread

    from server.app import build_server

    async def inline(fn: Any, *args: Any, limiter: Any = None, **_: Any) -> Any:
        return fn(*args)

    server = build_server(lab, default_agent="bench000")
    rng = random.Random(5)
    out += ["", "### In-process (MCPServer.call_tool, no transport), 20 calls each", ""]
    out += ["| tool | mean ms | top cumulative (own code) |", "|---|---:|---|"]
    for tool, _ in MIX:
        profiler = cProfile.Profile()
        started = time.perf_counter()

        async def calls(name: str = tool) -> None:
            for _ in range(20):
                await server.call_tool(name, arguments_for(name, rng, top_id, "bench000"))

        with mock.patch.object(anyio.to_thread, "run_sync", inline):
            profiler.enable()
            asyncio.run(calls())
            profiler.disable()
        mean = (time.perf_counter() - started) / 20 * 1000
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
        hot = [
            line.split()[-1].replace(str(ROOT) + "/", "")
            + f" {float(line.split()[3]) / 20 * 1000:.1f}ms"
            for line in text.getvalue().splitlines()
            if str(ROOT / "server") in line and line.strip()[:1].isdigit()
        ]
        interesting = [h for h in hot if "/app" not in h and "tool_support" not in h][:5]
        out.append(f"| {tool} | {mean:.1f} | {'; '.join(interesting)} |")


def machine_reference() -> str:
    """The machine's speed now: CPU seconds of a fixed pure-Python loop. This VM's speed drifts
    between runs (the same code measured 10.8 and 15.4 ms of server CPU per call an hour
    apart), so each run prints it before and after, and runs are compared beside it."""
    started = time.process_time()
    total = 0
    for n in range(10**7):
        total += n
    return f"reference: a pure-Python loop of 10^7 additions took {time.process_time() - started:.2f} CPU-s"


def run_large(args: argparse.Namespace) -> int:
    report: list[str] = [machine_reference()]
    with tempfile.TemporaryDirectory(prefix="ar-bench-agents100-") as tmp:
        home = args.home or Path(tmp)
        if (home / "data").exists():
            pass
        elif args.data:
            shutil.copytree(args.data, home / "data")
        else:
            from trainer import prepare as prepare_module

            prepare_module.prepare(home / "data", quiet=True)
        agents = [f"bench{n:03d}" for n in range(args.agent_count)]
        seeded = seed_record(home, args.history, agents)
        report.append(
            f"seeded {seeded['experiments']} experiments and {seeded['claims']} claims in "
            f"{seeded['seed_s']:.1f} s ({seeded['db_mb']:.0f} MiB file)"
        )
        print(report[-1], flush=True)
        if args.profile_only:
            profile_tools(seeded["lab"], seeded["experiments"], report)
            print("\n".join(report))
            return 0
        lab = seeded["lab"]
        top_id = seeded["experiments"]
        if args.profile:
            profile_tools(lab, top_id, report)
            print("\n".join(report[-12:]), flush=True)
        before = {t: bulk_count(lab, t) for t in ("experiments", "claims")}
        port = free_port()
        started = time.perf_counter()
        server_cores, client_cores = split_cores() if args.split_cores else (None, None)
        server = start_server(home, port, server_cores)
        if client_cores:  # this process (the agents, the churn, the dashboard poller) and the probe
            os.sched_setaffinity(0, client_cores)
            report.append(
                f"--split-cores: the server on core(s) {sorted(server_cores or ())}, the agents' "
                f"clients and the probe on {sorted(client_cores)}, as if on other machines"
            )
        report.append(f"server ready in {time.perf_counter() - started:.1f} s")
        url = f"http://127.0.0.1:{port}"
        try:
            rss = {"start": rss_mb(server.pid)}
            idle = asyncio.run(poll_dashboard(url, seeded["viewer"], None, rounds=5))
            rss["after dashboard"] = rss_mb(server.pid)
            probe_token = issue_token(lab.store, "bench-probe")
            compile_ms = schema_compile_ms(url, probe_token)
            with Churn(lab, args.churn) as churn:
                think = drive_measured(
                    server.pid, url, seeded["tokens"], args.calls, args.think, top_id,
                    seeded["viewer"], Probe(url, probe_token, top_id, home / "probe-think.json"),
                    args.client_processes,
                )  # fmt: skip
                rss["after think-time run"] = rss_mb(server.pid)
                saturated = None
                if args.saturation_calls:
                    saturated = drive_measured(
                        server.pid, url, seeded["tokens"], args.saturation_calls, 0.0, top_id,
                        seeded["viewer"],
                        Probe(url, probe_token, top_id, home / "probe-saturated.json"),
                        args.client_processes,
                    )  # fmt: skip
                    rss["after saturation run"] = rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(30)
        after = {t: bulk_count(lab, t) for t in ("experiments", "claims")}
        from server.store import bulk

        claimed = think["claims_seen"] + (saturated["claims_seen"] if saturated else [])
        new_ids = set(bulk.claim_ids(lab.store)) - set(range(1, before["claims"] + 1))
        checks = [
            f"experiments before/after: {before['experiments']} / {after['experiments']}; "
            f"written during the runs (--churn): {churn.written}; before + written == after: "
            f"{before['experiments'] + churn.written == after['experiments']}",
            f"claims before/after: {before['claims']} / {after['claims']}; claim_idea calls "
            f"answered {len(claimed)} ids ({len(set(claimed))} distinct); new claim rows "
            f"{len(new_ids)}; ids answered == new rows: {set(claimed) == new_ids}",
        ]
    arrival = (
        f"{args.agent_count} agents x {args.calls} calls, exponential think time mean "
        f"{args.think:g} s before each call (~{args.agent_count / args.think:.0f} calls/s offered)"
        + (f"; one experiment lands every {args.churn:g} s" if args.churn else "")
        + (
            f"; the agents' clients in {args.client_processes} processes"
            if args.client_processes > 1
            else ""
        )
    )
    lines = [*report, ""]
    lines += tool_table(f"Think-time run ({arrival})", think)
    lines += ["", *server_side_table(think)]
    lines += ["", *probe_table(think)]
    lines += ["", cpu_line(think), "", *compile_lines(think, compile_ms)]
    lines += [
        "",
        *dashboard_table("Dashboard under the think-time load (viewer token)", think["dashboard"]),
    ]
    if saturated:
        lines += [
            "",
            *tool_table(
                f"Saturation run ({args.agent_count} agents x {args.saturation_calls} calls, "
                "no think time)",
                saturated,
            ),
            "",
            *server_side_table(saturated),
            "",
            *probe_table(saturated),
            "",
            cpu_line(saturated),
            "",
            *compile_lines(saturated, compile_ms),
        ]
        lines += [
            "", *dashboard_table("Dashboard under the saturation load", saturated["dashboard"])
        ]  # fmt: skip
    lines += ["", *dashboard_table("Dashboard idle (5 rounds, before the agents)", idle)]
    lines += ["", "### Server memory (RSS)", ""]
    lines += [f"- {k}: {v:.0f} MiB" for k, v in rss.items()]
    lines += ["", "### Rows", "", *[f"- {c}" for c in checks]]
    lines += [
        f"- transport errors (a connection dropped, the call not answered, a new session "
        f"opened): {len(TRANSPORT_ERRORS)}",
        *[f"  - {e}" for e in TRANSPORT_ERRORS[:5]],
    ]
    lines += ["", machine_reference()]
    print("\n".join(lines))
    return 0


class Churn:
    """Results landing while the agents work: every `every` seconds one finished experiment is
    written to the record (through Store.create_experiment, from this process), so the server's
    kept answers (server.store.read_cache) go stale and are rebuilt under load, as they would be
    with runs finishing."""

    def __init__(self, lab: Any, every: float) -> None:
        import threading

        self.lab, self.every, self.written = lab, every, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(7)
        while not self.stop.wait(self.every):
            self.lab.store.create_experiment(
                agent=f"bench{rng.randrange(AGENT_COUNT):03d}",
                requested_by="bench000",
                kind="experiment",
                status="ok",
                verdict=rng.choice(["worse", "within_noise"]),
                description=rng.choice(IDEAS).format(x=rng.randint(1, 9)) + " (landed under load)",
                metric_value=round(rng.uniform(1.7, 2.0), 6),
                hardware=self.lab.hardware,
                budget_seconds=self.lab.budget_seconds,
                budget_kind=self.lab.settings.resolved_budget_kind(),
                scale="S",
                total_seconds=4.1,
                finished_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            )
            self.written += 1

    def __enter__(self) -> Churn:
        if self.every > 0:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


def bulk_count(lab: Any, table: str) -> int:
    from server.store import bulk

    return bulk.table_count(lab.store, table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40, help="tool calls per agent")
    parser.add_argument("--agents", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--data", type=Path, default=os.environ.get("AUTORESEARCH_TEST_DATA"))
    parser.add_argument(
        "--history", type=int, default=0, help="the large mode: seed this many experiments"
    )
    parser.add_argument("--agent-count", type=int, default=AGENT_COUNT)
    parser.add_argument("--think", type=float, default=1.0, help="mean think time, seconds")
    parser.add_argument(
        "--saturation-calls",
        type=int,
        default=10,
        help="calls per agent without think time (0: no such run)",
    )
    parser.add_argument(
        "--churn", type=float, default=1.0, help="write a finished experiment every N s (0: none)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile every tool in-process")
    parser.add_argument("--profile-only", action="store_true", help="seed, profile, no server")
    parser.add_argument(
        "--home", type=Path, help="keep the seeded home here (and reuse a seeded one: no seeding)"
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        default=1,
        help="spread the agents over this many client processes (1: all in this one, as before)",
    )
    parser.add_argument(
        "--split-cores",
        action="store_true",
        help="the server on one core, the clients on the others (the server's time without "
        "the clients' CPU beside it, as with agents on other machines)",
    )
    parser.add_argument(
        "--probe-client", nargs=4, metavar=("URL", "TOKEN", "TOP_ID", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.calls < 1 or args.saturation_calls < 0:
        parser.error("--calls must be at least 1 and --saturation-calls at least 0")
    if args.probe_client:
        url, token, top_id, out = args.probe_client
        asyncio.run(probe_calls(url, token, int(top_id), Path(out)))
        return 0
    if args.history:
        return run_large(args)
    with tempfile.TemporaryDirectory(prefix="ar-bench-agents-") as tmp:
        home = Path(tmp)
        if args.data:
            shutil.copytree(args.data, home / "data")
        names = [f"bench{i}" for i in range(max(args.agents))]
        tokens = [
            subprocess.run(
                [EXE, "tokens", "add", name, "--data-dir", str(home)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            for name in names
        ]
        port = free_port()
        server = start_server(home, port)
        url = f"http://127.0.0.1:{port}"
        try:
            results = []
            for n in args.agents:
                r = asyncio.run(measure(url, tokens[:n], args.calls))
                results.append((n, r))
        finally:
            server.terminate()
            server.wait(30)
    print(
        f"\n{'agents':>6} {'calls':>6} {'wall s':>7} {'calls/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7}"
    )
    for n, r in results:
        print(
            f"{n:>6} {r['calls']:>6} {r['wall_s']:>7.2f} {r['calls_per_s']:>8.1f} "
            f"{r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f} {r['max_ms']:>7.1f}"
        )
    goal = next((r["p95_ms"] for n, r in results if n == 16), None)
    if goal is not None:
        print(
            f"goal p95 <= 50 ms at 16 agents: {'met' if goal <= 50 else 'MISSED'} ({goal:.1f} ms)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
