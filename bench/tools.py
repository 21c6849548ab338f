"""Benchmark: latency of the hot MCP tools, in memory and over HTTP, with a small and a large record.

read_file (train.py), apply_patch (a one-line diff applied and reverted alternately) and
get_history (the default page; also order='best' and a full-text query) are timed with 100 and
with 10,000 experiments in the store, through the in-memory client (`Client(server)`) and
through the real HTTP app (build_app under uvicorn, a bearer token, streamable HTTP), and
`server`: MCPServer.call_tool with no client at all (the server's share of a call). The
reference in the same run is an uncached prompts/list, the transport's own floor (2026
connections have no ping). Prints p50/p95 next to the goals; not a pass/fail test.

Synthetic experiments are inserted straight into the store (finished, with metric_value,
descriptions and diffs); nothing trains.

Run: `.venv/bin/python bench/tools.py [--iterations 60] [--rows 100,10000] [--data-dir DIR]`
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from sandbox.workspace import hash_files
from server.app import build_server
from server.auth import issue_token
from server.lab import Lab, LabSettings, unified_diff
from server.store import utc_now, write_transaction
from server.web import build_app
from tests.support import free_port, serve_app
from trainer import prepare as prepare_module

GOAL_MS = {"in-memory": 5.0, "http": 20.0}
HISTORY_GOAL_MS = 50.0  # get_history with 10,000 experiments, either transport
HISTORY_GOAL_ROWS = 10_000
IDEAS = [
    "warmdown {x} -> 0.7: longer decay helps at short budgets",
    "RoPE base 10k -> {x}k: longer wavelengths",
    "matrix lr 0.02 -> 0.0{x}: Muon tolerates more",
    "batch size 8 -> {x}: more tokens per step",
    "weight decay 0 -> 0.{x} on the embeddings",
    "ReLU^2 -> GELU in the MLP ({x})",
    "QK-norm scale {x}",
]
AGENTS = ["alice", "bob", "carol", "dave", "erin"]


# ---------------------------------------------------------------- the record


def fill(lab: Lab, rows: int, seed: int = 0) -> None:
    """Insert `rows` finished experiments (about 5% crashes), with descriptions and real diffs."""
    rng = random.Random(seed)
    baseline = lab.baseline_files["train.py"]
    lines = baseline.splitlines(keepends=True)
    with write_transaction(lab.store.db):
        for n in range(rows):
            changed = list(lines)
            where = rng.randrange(len(changed))
            changed[where] = f"# experiment {n}: {changed[where]}"
            files = {"train.py": "".join(changed)}
            diff = unified_diff(lab.baseline_files, files)
            ok = rng.random() > 0.05
            lab.store.create_experiment(
                agent=AGENTS[n % len(AGENTS)],
                kind="experiment",
                status="ok" if ok else "crash",
                description=rng.choice(IDEAS).format(x=rng.randint(1, 9)),
                metric_value=round(rng.uniform(1.6, 2.2), 4) if ok else None,
                verdict=rng.choice(["improved", "within_noise", "worse"]) if ok else "failed",
                code=files,
                code_hash=hash_files({"train.py": files["train.py"].encode()}),
                diff_parent=diff,
                diff_baseline=diff,
                parent_id=n if n else None,
                hardware=lab.hardware,
                budget_seconds=lab.budget_seconds,
                budget_kind=lab.settings.budget_kind,
                scale="S",
                seed=lab.settings.seed,
                flags=[],
                log_tail="step 100 | loss 3.21\n" * 20,
                created_at=utc_now(),
                finished_at=utc_now(),
            )


def new_lab(data_dir: Path, rows: int) -> Lab:
    home = Path(tempfile.mkdtemp(prefix="bench-tools-"))
    shutil.copytree(data_dir, home / "data")
    lab = Lab(LabSettings(home=home, budget_seconds=4, baseline_repeats=0, start_scheduler=False))
    started = time.perf_counter()
    fill(lab, rows)
    print(f"  {rows:>6} experiments inserted in {time.perf_counter() - started:.1f} s")
    return lab


# ---------------------------------------------------------------- clients


class ServerOnly:
    """No client, no transport: `MCPServer.call_tool` itself, the server's share of a call.

    The difference to `in-memory` is the client's work, mostly validating structured content
    against the tool's output schema (jsonschema).
    """

    def __init__(self, lab: Lab) -> None:
        self.server = build_server(lab, default_agent="bench")

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        return await self.server.call_tool(name, arguments)

    async def list_prompts(self, cache_mode: str = "bypass") -> Any:
        return await self.server.list_prompts()


@asynccontextmanager
async def server_only(lab: Lab) -> AsyncIterator[ServerOnly]:
    yield ServerOnly(lab)


@asynccontextmanager
async def in_memory(lab: Lab) -> AsyncIterator[Client]:
    async with Client(build_server(lab, default_agent="bench")) as client:
        yield client


@asynccontextmanager
async def over_http(lab: Lab) -> AsyncIterator[Client]:
    """The real app under uvicorn in a thread, and an authenticated streamable-HTTP client."""
    port = free_port()
    token = issue_token(lab.store, "bench")
    with serve_app(build_app(lab, host="127.0.0.1", port=port, auth=True), port) as url:
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
            Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
        ):
            yield client


# ---------------------------------------------------------------- timing


def tiny_diffs(lab: Lab) -> tuple[str, str]:
    """A one-line change of train.py and its reverse."""
    lines = lab.baseline_files["train.py"].splitlines()
    number = next(i for i, line in enumerate(lines) if line.startswith("BATCH_SIZE = ")) + 1
    old, new = lines[number - 1], lines[number - 1] + "  # bench"

    def diff(a: str, b: str) -> str:
        return (
            f"--- a/train.py\n+++ b/train.py\n@@ -{number - 1},3 +{number - 1},3 @@\n"
            f" {lines[number - 2]}\n-{a}\n+{b}\n {lines[number]}\n"
        )

    return diff(old, new), diff(new, old)


async def timed(call: Callable[[], Awaitable[Any]], iterations: int) -> list[float]:
    """Milliseconds per call, after three warm-up calls; a refused call stops the benchmark."""
    for _ in range(3):
        await call()
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(client: Any, lab: Lab, iterations: int) -> dict[str, list[float]]:
    async def tool(name: str, **arguments: Any) -> None:
        result = await client.call_tool(name, arguments)
        if result.is_error:
            raise RuntimeError(f"{name}({arguments}) was refused: {result.content}")

    forward, backward = tiny_diffs(lab)
    patched = b"  # bench\n" in lab.workspace("bench").read_bytes("train.py")
    flip = {"next": backward if patched else forward}

    async def patch() -> None:
        diff = flip["next"]
        flip["next"] = backward if diff is forward else forward
        await tool("apply_patch", diff=diff)

    return {
        "prompts/list (ref)": await timed(
            lambda: client.list_prompts(cache_mode="bypass"), iterations
        ),
        "read_file train.py": await timed(lambda: tool("read_file", path="train.py"), iterations),
        "apply_patch 1 line": await timed(patch, iterations),
        "get_history": await timed(lambda: tool("get_history"), iterations),
        "get_history best": await timed(lambda: tool("get_history", order="best"), iterations),
        "get_history query": await timed(lambda: tool("get_history", query="warmdown"), iterations),
    }


def goal_for(transport: str, operation: str, rows: int) -> float | None:
    if operation.startswith("prompts/list") or transport not in GOAL_MS:
        return None
    if operation.startswith("get_history") and rows >= HISTORY_GOAL_ROWS:
        return HISTORY_GOAL_MS
    return GOAL_MS[transport]


async def run(data_dir: Path, row_counts: list[int], iterations: int) -> list[dict[str, Any]]:
    table = []
    for rows in row_counts:
        lab = new_lab(data_dir, rows)
        try:
            transports = (("server", server_only), ("in-memory", in_memory), ("http", over_http))
            for transport, connect in transports:
                async with connect(lab) as client:
                    for operation, samples in (await measure(client, lab, iterations)).items():
                        table.append(
                            {
                                "transport": transport,
                                "rows": rows,
                                "operation": operation,
                                "p50": statistics.median(samples),
                                "p95": percentile(samples, 0.95),
                                "goal": goal_for(transport, operation, rows),
                            }
                        )
        finally:
            lab.close()
            shutil.rmtree(lab.home, ignore_errors=True)
    return table


def print_table(table: list[dict[str, Any]]) -> None:
    print(f"\n{'transport':<10} {'rows':>6}  {'operation':<20} {'p50 ms':>8} {'p95 ms':>8}  goal")
    for row in table:
        goal = row["goal"]
        verdict = (
            ""
            if goal is None
            else f"p50 <= {goal:g} ms: " + ("met" if row["p50"] <= goal else "MISSED")
        )
        print(
            f"{row['transport']:<10} {row['rows']:>6}  {row['operation']:<20} "
            f"{row['p50']:>8.2f} {row['p95']:>8.2f}  {verdict}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--rows", default="100,10000", help="comma-separated record sizes")
    parser.add_argument("--data-dir", type=Path, help="a prepared data dir (default: prepare one)")
    args = parser.parse_args()
    logging.disable(logging.INFO)  # the HTTP server logs every request at INFO
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="bench-tools-data-")) / "data"
    if not (data_dir / "manifest.json").exists():
        prepare_module.prepare(data_dir, quiet=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"bench/tools.py: {os.cpu_count()} CPUs, load average {load:.2f} at start")
    table = anyio.run(run, data_dir, [int(n) for n in args.rows.split(",")], args.iterations)
    print_table(table)


if __name__ == "__main__":
    main()
