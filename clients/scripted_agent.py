"""A researcher without an LLM: random search over train.py's hyperparameters, MCP tools only
(the constants of either bundled target: the GPT trainer's or targets/digits').

It speaks to the server the way any MCP client does, so it doubles as an end-to-end check
of the tools. Each experiment: read train.py (read_file), change one hyperparameter constant
at the top to a random value in a sane range (edit_file), run it (run_experiment, then
wait_experiment until the status is final), print one line, and after a `worse` or failed
verdict go back to the best code (checkout ref='best', or 'baseline' if nothing succeeded).

Over stdio it spawns the server itself (the command after `--`):

    python clients/scripted_agent.py -n 3 --seed 1 -- \\
        autoresearch-mcp serve --data-dir /tmp/ar --budget 4 --agent scripted

Over streamable HTTP it needs the server's URL and a bearer token
(`autoresearch-mcp tokens add NAME`):

    python clients/scripted_agent.py -n 3 --url http://127.0.0.1:8000/mcp --token ar_...

Exit status: 0 when every experiment reached a final status, 1 otherwise, 2 on a usage or
connection error. Importable: `run_agent(client, n, seed)` drives an entered `mcp.Client`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TextIO

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

FINAL_STATUSES = ("ok", "crash", "timeout", "integrity_fail", "cancelled", "interrupted")
LIVE_STATUSES = ("queued", "running")
EDITABLE_FILE = "train.py"
CALL_TIMEOUT_SECONDS = 180.0  # one tool call; the server bounds its own waits (--call-wait)
EXPERIMENT_TIMEOUT_SECONDS = 1800.0  # one experiment, queueing included, before giving up

Log = Callable[[str], Any]


@dataclass(frozen=True)
class Knob:
    """One hyperparameter constant at the top of train.py and how to draw a new value for it."""

    name: str
    draw: Callable[[random.Random], float | int]
    fmt: Callable[[float | int], str]


def _log_uniform(low: float, high: float) -> Callable[[random.Random], float]:
    return lambda rng: math.exp(rng.uniform(math.log(low), math.log(high)))


def _lr(value: float | int) -> str:
    return f"{float(value):.3g}"


def _frac(value: float | int) -> str:
    return f"{float(value):.2f}"


# The constants of both bundled targets' train.py (the GPT trainer's and targets/digits'); an
# experiment changes one that the file defines.
KNOBS: tuple[Knob, ...] = (
    Knob("MATRIX_LR", _log_uniform(0.005, 0.06), _lr),
    Knob("EMBED_LR", _log_uniform(0.002, 0.05), _lr),
    Knob("HEAD_LR", _log_uniform(0.001, 0.02), _lr),
    Knob("WARMDOWN_FRAC", lambda rng: rng.uniform(0.1, 0.9), _frac),
    Knob("WEIGHT_DECAY", lambda rng: rng.choice((0.0, 0.01, 0.05, 0.1)), _frac),
    Knob("BATCH_SIZE", lambda rng: rng.choice((4, 6, 8, 12, 16)), lambda v: str(int(v))),
    Knob("LEARNING_RATE", _log_uniform(0.01, 0.5), _lr),
    Knob("MOMENTUM", lambda rng: rng.choice((0.0, 0.5, 0.8, 0.9, 0.95)), _frac),
    Knob("EPOCHS", lambda rng: rng.choice((5, 10, 20, 40)), lambda v: str(int(v))),
)


class AgentError(RuntimeError):
    """A tool refused or the server answered something the agent cannot work with."""


def constant_line(source: str, name: str) -> tuple[str, str]:
    """The whole line `NAME = value  # comment` in train.py and its value text."""
    match = re.search(rf"^{name}\s*=\s*([^#\n]+?)\s*(#.*)?$", source, flags=re.MULTILINE)
    if match is None:
        raise AgentError(f"{name} is not a constant at the top of {EDITABLE_FILE}")
    return match.group(0), match.group(1)


def propose(source: str, rng: random.Random) -> tuple[Knob, str, str, str, str]:
    """Pick a knob present in `source` and a new value; returns (knob, old line, new line, old, new)."""
    candidates = [k for k in KNOBS if re.search(rf"^{k.name}\s*=", source, flags=re.MULTILINE)]
    if not candidates:
        raise AgentError(f"none of {[k.name for k in KNOBS]} is defined in {EDITABLE_FILE}")
    knob = rng.choice(candidates)
    line, old_value = constant_line(source, knob.name)
    for _ in range(20):
        new_value = knob.fmt(knob.draw(rng))
        if new_value != old_value.strip():
            break
    new_line = line.replace(old_value, new_value, 1)
    return knob, line, new_line, old_value.strip(), new_value


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call a tool and return its structured result; a tool error becomes AgentError."""
    result = await client.call_tool(tool, arguments, read_timeout_seconds=CALL_TIMEOUT_SECONDS)
    text = " ".join(getattr(block, "text", "") for block in result.content).strip()
    if result.is_error:
        raise AgentError(f"{tool}: {text or 'error without a message'}")
    if result.structured_content is not None:
        return dict(result.structured_content)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise AgentError(f"{tool} returned no structured result: {text[:200]}") from exc


async def read_source(client: Client, path: str = EDITABLE_FILE) -> str:
    """The whole file through read_file's pages, without the line-number prefixes."""
    lines: list[str] = []
    offset: int | None = 1
    while offset is not None:
        page = await call(client, "read_file", path=path, offset=offset, limit=2000)
        lines += [
            line.split("\t", 1)[1] if "\t" in line else "" for line in page["content"].split("\n")
        ]
        offset = page.get("next_offset")
    return "\n".join(lines)


async def finish(client: Client, row: dict[str, Any], deadline: float) -> dict[str, Any]:
    """Call wait_experiment until the experiment's status is final and its verdict settled (a
    `candidate` waits for the server's fresh-seed runs), or the deadline passes."""
    while (
        row["status"] in LIVE_STATUSES or row.get("verdict") == "candidate"
    ) and time.monotonic() < deadline:
        row = await call(client, "wait_experiment", experiment_id=row["id"])
    return row


async def go_back(client: Client) -> str:
    """Check out the best code, or the baseline when nothing has succeeded yet."""
    try:
        result = await call(client, "checkout", ref="best")
        return "best" if result.get("experiment_id") is None else f"best #{result['experiment_id']}"
    except AgentError:
        await call(client, "checkout", ref="baseline")
        return "baseline"


def _figure(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


async def run_agent(
    client: Client,
    n: int,
    seed: int,
    log: Log = print,
    *,
    experiment_timeout: float = EXPERIMENT_TIMEOUT_SECONDS,
) -> list[dict[str, Any]]:
    """Run `n` random-search experiments through an entered `Client`; one dict per experiment.

    Each dict has id, change, status, metric_value, verdict, train_seconds, reused_from, final and
    the checkout made afterwards (or None).
    """
    rng = random.Random(seed)
    results: list[dict[str, Any]] = []
    tried: set[str] = set()  # code this agent already ran: the server would only reuse it
    for number in range(1, n + 1):
        source = await read_source(client)
        for _ in range(50):
            knob, old_line, new_line, old_value, new_value = propose(source, rng)
            if source.replace(old_line, new_line, 1) not in tried:
                break
        tried.add(source.replace(old_line, new_line, 1))
        await call(client, "edit_file", path=EDITABLE_FILE, old=old_line, new=new_line)
        change = f"{knob.name} {old_value} -> {new_value}"
        row = await call(
            client,
            "run_experiment",
            description=f"{change} (scripted random search, seed {seed}, step {number})",
            wait=True,
        )
        row = await finish(client, row, time.monotonic() + experiment_timeout)
        final = row["status"] in FINAL_STATUSES
        went_back = None
        if final and (row["status"] != "ok" or row.get("verdict") in ("worse", "failed")):
            went_back = await go_back(client)
        record = {
            "id": row["id"],
            "change": change,
            "status": row["status"],
            "metric_value": row.get("metric_value"),
            "verdict": row.get("verdict"),
            "train_seconds": row.get("train_seconds"),
            "reused_from": row.get("reused_from"),
            "final": final,
            "checkout": went_back,
        }
        results.append(record)
        log(
            f"experiment {number}/{n}: #{row['id']} {change}: status {row['status']}, "
            f"metric_value {_figure(row.get('metric_value'))}, verdict {row.get('verdict') or '-'}"
            + (f", reused #{row['reused_from']}" if row.get("reused_from") else "")
            + (f"; checked out {went_back}" if went_back else "")
        )
    return results


async def history_summary(client: Client, log: Log = print, limit: int = 20) -> dict[str, Any]:
    """Print the agent's own history and the leaderboard head (get_history)."""
    history = await call(client, "get_history", scope="mine", limit=limit)
    log(f"history: {history['total']} experiment(s) of this agent")
    for row in history["rows"]:
        log(
            f"  #{row['id']} {row['status']:<14} metric_value {_figure(row.get('metric_value')):>7}  "
            f"{row.get('verdict') or '-':<13} {row['description']}"
        )
    for entry in history.get("leaderboard", [])[:3]:
        log(
            f"  leaderboard {entry['rank']}: #{entry['id']} {entry['agent']} metric_value {entry['metric_value']:.4f}"
        )
    return history


def stdio_transport(argv: list[str], server_log: TextIO | None = None) -> Any:
    """A Transport that spawns the server command `argv` and talks over its stdin/stdout."""
    if not argv:
        raise ValueError("give the server command after `--`")
    params = StdioServerParameters(command=argv[0], args=list(argv[1:]), env=dict(os.environ))
    return stdio_client(params, errlog=server_log or sys.stderr)


@asynccontextmanager
async def http_transport(url: str, token: str | None, timeout: float = CALL_TIMEOUT_SECONDS):
    """A Transport over streamable HTTP with the bearer token on every request."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
        streamable_http_client(url, http_client=http) as streams,
    ):
        yield streams


async def main_async(args: argparse.Namespace) -> int:
    log: Log = lambda line: print(line, flush=True)  # noqa: E731
    server_log = open(args.server_log, "a") if args.server_log else None  # noqa: SIM115
    try:
        transport = (
            http_transport(args.url, args.token)
            if args.url
            else stdio_transport(args.server, server_log)
        )
        async with Client(transport, mode=args.mode) as client:
            info = client.server_info
            log(
                f"connected to {getattr(info, 'name', '?')} {getattr(info, 'version', '')} "
                f"over {'HTTP' if args.url else 'stdio'} (protocol {client.protocol_version})"
            )
            results = await run_agent(client, args.n, args.seed, log)
            await history_summary(client, log, limit=max(args.n, 5))
    finally:
        if server_log:
            server_log.close()
    unfinished = [r["id"] for r in results if not r["final"]]
    if unfinished:
        log(f"not final: {unfinished}")
        return 1
    return 0


def describe(exc: BaseException) -> str:
    """The messages inside an exception (group), one line."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(inner) for inner in exc.exceptions)
    return str(exc) or type(exc).__name__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Random-search researcher over MCP (no LLM).",
        usage="%(prog)s [-n N] [--seed S] (--url URL --token T | -- SERVER COMMAND ...)",
    )
    parser.add_argument("-n", type=int, default=3, help="experiments to run (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the agent's own RNG")
    parser.add_argument("--url", help="streamable HTTP endpoint, e.g. http://127.0.0.1:8000/mcp")
    parser.add_argument(
        "--token",
        default=os.environ.get("AUTORESEARCH_TOKEN"),
        help="bearer token for --url (default $AUTORESEARCH_TOKEN)",
    )
    parser.add_argument(
        "--mode",
        default="auto",
        help="protocol negotiation of mcp.Client: auto (default) or legacy (handshake era)",
    )
    parser.add_argument("--server-log", help="stdio: append the server's stderr to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    server: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, server = argv[:cut], argv[cut + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.server = server
    if bool(args.url) == bool(server):
        parser.error("give either --url (HTTP) or the server command after `--` (stdio)")
    if args.n < 1:
        parser.error("-n must be at least 1")
    try:
        return anyio.run(main_async, args)
    except Exception as exc:  # a refused tool, an unreachable server, a 401: say so, exit 2
        print(f"scripted_agent: {type(exc).__name__}: {describe(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
