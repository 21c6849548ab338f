"""Several scripted researchers at once against one HTTP server, each with its own token.

Every agent is `scripted_agent.run_agent` over its own MCP connection and bearer token, so
each has its own workspace while the history, the leaderboard and the queue are shared.
Tokens come from `--tokens` (one per agent) or are created with `autoresearch-mcp tokens add`
in `--data-dir` (the server's state folder). `--spawn` starts the HTTP server too (stopped
at the end), with any extra `serve` options after `--`:

    python clients/multi_agent.py -k 3 -n 2 --url http://127.0.0.1:8000/mcp --data-dir ~/ar
    python clients/multi_agent.py -k 2 -n 1 --spawn --port 8765 --data-dir /tmp/ar -- --budget 4

Prints each agent's lines prefixed with its name, then one summary line per agent.
Exit status: 0 when every agent's experiments reached a final status.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scripted_agent import describe, history_summary, http_transport, run_agent

START_TIMEOUT_SECONDS = 120.0


def cli_command() -> list[str]:
    """How to run `autoresearch-mcp`: the console script next to this Python, else on PATH."""
    beside = Path(sys.executable).with_name("autoresearch-mcp")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("autoresearch-mcp")
    return [found] if found else [sys.executable, "-m", "server.cli"]


def add_token(data_dir: Path, name: str) -> str:
    """A fresh `agent` token for `name` (autoresearch-mcp tokens add NAME --data-dir DIR)."""
    out = subprocess.run(
        [*cli_command(), "tokens", "add", name, "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.stdout.strip().splitlines()[-1]


def wait_until_up(url: str, process: subprocess.Popen[Any] | None, timeout: float) -> None:
    """Poll the server's /healthz until it answers (or the spawned process died)."""
    health = url.rsplit("/mcp", 1)[0] + "/healthz"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            if httpx2.get(health, timeout=5).status_code < 500:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no answer from {health} within {timeout:g} s")


def summary_line(name: str, results: list[dict[str, Any]], error: str | None) -> str:
    if error:
        return f"{name}: FAILED: {error}"
    ok = [r for r in results if r["status"] == "ok" and r.get("metric_value") is not None]
    best = min(ok, key=lambda r: r["metric_value"]) if ok else None
    verdicts: dict[str, int] = {}
    for r in results:
        verdicts[r.get("verdict") or r["status"]] = (
            verdicts.get(r.get("verdict") or r["status"], 0) + 1
        )
    return (
        f"{name}: {len(results)} experiment(s), {len(ok)} ok"
        + (
            f", best #{best['id']} metric_value {best['metric_value']:.4f} ({best['change']})"
            if best
            else ""
        )
        + f", verdicts {verdicts}"
    )


async def run_all(url: str, agents: list[tuple[str, str]], n: int, seed: int) -> int:
    """Run every (name, token) agent concurrently; print the per-agent summaries."""
    outcomes: dict[str, tuple[list[dict[str, Any]], str | None]] = {}

    async def one(index: int, name: str, token: str) -> None:
        def log(line: str) -> None:
            print(f"[{name}] {line}", flush=True)

        results: list[dict[str, Any]] = []
        try:
            async with Client(http_transport(url, token)) as client:
                results = await run_agent(client, n, seed + index, log)
                await history_summary(client, log, limit=max(n, 5))
            outcomes[name] = (results, None)
        except Exception as exc:  # one agent's failure must not stop the others
            outcomes[name] = (results, f"{type(exc).__name__}: {describe(exc)}")

    async with anyio.create_task_group() as group:
        for index, (name, token) in enumerate(agents):
            group.start_soon(one, index, name, token)

    print("summary:", flush=True)
    failed = False
    for name, _ in agents:
        results, error = outcomes.get(name, ([], "did not run"))
        print("  " + summary_line(name, results, error), flush=True)
        failed |= bool(error) or len(results) < n or not all(r["final"] for r in results)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", type=int, default=2, help="agents (default 2)")
    parser.add_argument("-n", type=int, default=2, help="experiments per agent (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="agent i uses seed + i")
    parser.add_argument("--url", help="the server's MCP endpoint (default from --host/--port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--data-dir", type=Path, help="the server's state folder (to create tokens)"
    )
    parser.add_argument(
        "--tokens", help="comma-separated tokens, one per agent, instead of creating them"
    )
    parser.add_argument("--prefix", default="scripted", help="agent names: PREFIX-1, PREFIX-2, ...")
    parser.add_argument(
        "--spawn", action="store_true", help="start `autoresearch-mcp serve --http` too"
    )
    args = parser.parse_args(argv)
    url = args.url or f"http://{args.host}:{args.port}/mcp"
    if args.tokens:
        tokens = [t.strip() for t in args.tokens.split(",") if t.strip()]
        if len(tokens) != args.k:
            parser.error(f"--tokens has {len(tokens)} token(s) for -k {args.k} agents")
        names = [f"{args.prefix}-{i + 1}" for i in range(args.k)]
    elif args.data_dir is None:
        parser.error("give --tokens, or --data-dir to create tokens there")
    else:
        names = [f"{args.prefix}-{i + 1}" for i in range(args.k)]
        tokens = [add_token(args.data_dir, name) for name in names]
    server = None
    if args.spawn:
        if args.data_dir is None:
            parser.error("--spawn needs --data-dir")
        command = [*cli_command(), "serve", "--http", "--host", args.host, "--port", str(args.port)]
        server = subprocess.Popen([*command, "--data-dir", str(args.data_dir), *extra])
    try:
        wait_until_up(url, server, START_TIMEOUT_SECONDS)
        return anyio.run(run_all, url, list(zip(names, tokens, strict=True)), args.n, args.seed)
    except (RuntimeError, subprocess.SubprocessError) as exc:
        print(f"multi_agent: {exc}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


if __name__ == "__main__":
    sys.exit(main())
