"""What the tests and the benchmarks share: free loopback ports, polling with a deadline, an ASGI
app served under uvicorn in a thread, a server process awaited on its /healthz, and experiments
awaited until they finish; a Lab on a copy of the prepared data, and finished runs written
into its record as the server records them (for tests that must not train).

Tests import it as `support` (pytest puts tests/ on sys.path); benchmarks, which put the
repository first on sys.path, as `tests.support`. Of the server it imports only the record's
vocabulary (the live statuses) at the top; the lab helpers import the lab when called, so a
test that only starts processes does not import it.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import uvicorn

from server.store import LIVE_STATUSES

__all__ = [
    "finished_run",
    "free_port",
    "lab_on_copy",
    "serve_app",
    "wait_for_healthz",
    "wait_until",
    "wait_until_finished",
]

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.05,
    message: str | Callable[[], str] = "the condition did not hold",
) -> T:
    """Call `condition` every `interval` seconds until it returns a truthy value, and return it.

    Raises AssertionError with `message` (called, if a function, for the latest state) when
    `timeout` seconds pass first. The condition is checked once more at the deadline, so a
    slow machine fails only when the condition is really false.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"{text} (waited {timeout:g} s)")
        time.sleep(interval)


@contextlib.contextmanager
def serve_app(
    app: Any, port: int | None = None, *, startup_timeout: float = 60.0, **config: Any
) -> Iterator[str]:
    """Run an ASGI app under uvicorn in a daemon thread on 127.0.0.1; yield its base URL.

    `port` defaults to a free one (pass the port the app was built for, if it needs to know).
    Extra keyword arguments go to uvicorn.Config. The server is stopped on exit.
    """
    port = free_port() if port is None else port
    options: dict[str, Any] = {"log_level": "warning", "lifespan": "on", **config}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_until(
            lambda: server.started or not thread.is_alive(),
            timeout=startup_timeout,
            message="the server did not start",
        )
        assert server.started, "the server thread ended before it started serving"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def wait_for_healthz(
    url: str,
    process: subprocess.Popen[Any] | None = None,
    *,
    timeout: float,
    log: Path | None = None,
) -> None:
    """Poll `url`/healthz until it answers 200; fail at once if `process` exits meanwhile.

    The assertion carries the end of `log` (the server's output), when given.
    """

    def tail() -> str:
        return log.read_text(errors="replace")[-4000:] if log is not None and log.exists() else ""

    def healthy() -> bool:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited ({process.returncode}):\n{tail()}")
        try:
            return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(
        healthy,
        timeout=timeout,
        interval=0.5,
        message=lambda: f"the server at {url} did not answer /healthz:\n{tail()}",
    )


async def connect_over_http(
    stack: contextlib.AsyncExitStack, url: str, token: str | None, *, timeout: float = 120
) -> Any:
    """A real MCP client (the SDK's, streamable HTTP) on `url`/mcp, with `token` as its bearer
    (none without), closed with `stack`."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx2.AsyncClient(headers=headers, timeout=timeout)
    await stack.enter_async_context(http)
    return await stack.enter_async_context(
        Client(streamable_http_client(url + "/mcp", http_client=http))
    )


class ExperimentSource(Protocol):
    """Anything that reads an experiment row by id (the Lab does)."""

    def experiment(self, experiment_id: int) -> dict[str, Any]: ...


def wait_until_finished(
    lab: ExperimentSource, ids: Iterable[int], *, timeout: float, interval: float = 0.5
) -> list[dict[str, Any]]:
    """The rows of these experiments once none is queued or running (in the order given)."""
    wanted = list(ids)
    latest: list[dict[str, Any]] = []

    def finished() -> bool:
        latest[:] = [lab.experiment(i) for i in wanted]
        return all(row["status"] not in LIVE_STATUSES for row in latest)

    wait_until(
        finished,
        timeout=timeout,
        interval=interval,
        message=lambda: (
            f"experiments {wanted} did not finish: "
            + ", ".join(f"{row['id']} {row['status']}" for row in latest)
        ),
    )
    return latest


def lab_on_copy(home: Path, data_dir: Path, **settings: Any) -> Any:
    """A Lab whose home holds a copy of the prepared data folder `data_dir`, with `settings`
    (LabSettings fields). The caller closes it."""
    import shutil

    from server.lab import Lab, LabSettings

    home.mkdir(parents=True, exist_ok=True)
    if not (home / "data").exists():
        shutil.copytree(data_dir, home / "data")
    return Lab(LabSettings(home=home, **settings))


TEMPLATE_TARGET = Path(__file__).resolve().parent.parent / "targets" / "template" / "target.toml"


def template_lab(home: Path, target: Path = TEMPLATE_TARGET, **settings: Any) -> Any:
    """A Lab on the template target (targets/template: numpy, a run of about a second, jailed,
    evaluated and recorded like any other), or on `target` (a variant of it), its data prepared
    in `home`. For tests of what the server does the same for every target: a GPT run costs
    ~11 CPU-s besides its budget (torch imports, export, evaluation). The caller closes it."""
    from sandbox.target import load_target
    from server.lab import Lab, LabSettings
    from server.targets import run_prepare

    home.mkdir(parents=True, exist_ok=True)
    assert run_prepare(load_target(target), home / "data", [], quiet=True) == 0
    return Lab(LabSettings(home=home, target_file=target, **settings))


def finished_run(
    lab: Any,
    agent: str,
    description: str,
    *,
    files: dict[str, str] | None = None,
    parent_files: dict[str, str] | None = None,
    **fields: Any,
) -> int:
    """A finished run written into the lab's record as the server records one: by default an
    `ok` experiment of `agent` on this lab's hardware, budget and level S, whose code is the
    baseline plus a comment naming `description`; `fields` override any column."""
    from sandbox.workspace import hash_files
    from server.lab import unified_diff
    from server.store import utc_now

    code = files or {"train.py": lab.baseline_files["train.py"] + f"# {description}\n"}
    row: dict[str, Any] = {
        "agent": agent,
        "kind": "experiment",
        "status": "ok",
        "description": description,
        "code": code,
        "code_hash": hash_files({k: v.encode() for k, v in code.items()}),
        "diff_parent": unified_diff(parent_files or lab.baseline_files, code),
        "diff_baseline": unified_diff(lab.baseline_files, code),
        "hardware": lab.hardware,
        "budget_seconds": lab.level_budget("S"),
        "budget_kind": lab.settings.budget_kind,
        "scale": "S",
        "seed": lab.settings.seed,
        "flags": [],
        "started_at": utc_now(),
        "finished_at": utc_now(),
    }
    row.update(fields)
    return int(lab.store.create_experiment(**row))


def run_with_report_fd(
    argv: list[str], *, stdin: str | None = None, timeout: float = 120
) -> tuple[int, bytes, str]:
    """Run an evaluator as the runner does, its report on an inherited pipe (`--report-fd N`
    appended to `argv`): (exit code, the raw report bytes, stderr). Nothing is parsed here."""
    import os

    read_fd, write_fd = os.pipe()
    try:
        process = subprocess.Popen(
            [*argv, "--report-fd", str(write_fd)],
            pass_fds=(write_fd,),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(write_fd)
        write_fd = -1
        _, stderr = process.communicate(input=stdin, timeout=timeout)
        chunks = []
        while chunk := os.read(read_fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    return process.returncode, b"".join(chunks), stderr


def statements_run(store: Any, read: Callable[[], object]) -> list[str]:
    """Every SQL statement the store's connection runs while `read()` runs (SQLite's trace)."""
    connection = store.db.conn
    statements: list[str] = []
    connection.set_trace_callback(statements.append)
    try:
        read()
    finally:
        connection.set_trace_callback(None)
    return statements
