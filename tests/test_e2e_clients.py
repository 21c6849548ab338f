"""End to end with real clients against the REAL server process (`autoresearch-mcp serve`).

(a) the scripted agent over stdio runs 3 real experiments, then the history is checked;
(b) HTTP on 127.0.0.1: no token and a bogus token get 401, a real token runs an experiment;
(c) the MCP Inspector CLI (pinned npm package) lists and calls tools over stdio and HTTP;
(d) Claude Code (pinned npm package) health-checks the server with `claude mcp list`,
    over stdio, over HTTP with a bearer header, from the project-scope .mcp.json, and
    inside its own network namespace where `unshare -n` is allowed.

Every subprocess runs in its own process group with a timeout and is killed (group and all)
in `finally`. Nothing asserts on timing: the machine is shared and slow.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import free_port, wait_for_healthz

from server.store import FINAL_STATUSES, Store

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIENTS = REPO_ROOT / "clients"
NODE_BIN = REPO_ROOT / "tests" / "clients" / "node_modules" / ".bin"
INSPECTOR = NODE_BIN / "mcp-inspector"
CLAUDE = NODE_BIN / "claude"
# A CPU-seconds budget keeps runs from timing out when neighbours load the machine.
SERVE_OPTIONS = [
    "--budget",
    "4",
    "--budget-kind",
    "cpu",
    "--baseline-repeats",
    "0",
    "--eval-windows",
    "4",
    "--confirm-runs",  # the clients are under test here; a candidate's 2 fresh seeds suffice
    "2",
]
EXPERIMENT_TIMEOUT = 1500  # seconds for a whole scripted-agent run (queues behind neighbours)
CLIENT_TIMEOUT = 240  # seconds for one Inspector / claude invocation
QUIET_CLAUDE_ENV = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "MCP_TIMEOUT": "120000",  # server start-up, in ms: a busy machine imports torch slowly
}


def cli_executable() -> str:
    """The `autoresearch-mcp` console script of this environment."""
    beside = Path(sys.executable).with_name("autoresearch-mcp")
    if beside.exists():
        return str(beside)
    found = shutil.which("autoresearch-mcp")
    if not found:
        pytest.fail(
            "the autoresearch-mcp console script is not installed: run make setup (pip install -e .)"
        )
    return found


def serve_command(home: Path, *extra: str) -> list[str]:
    return [cli_executable(), "serve", "--data-dir", str(home), *SERVE_OPTIONS, *extra]


def kill_group(process: subprocess.Popen[Any]) -> None:
    """Stop a process started with start_new_session=True and everything it spawned."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # stragglers of the group, e.g. a spawned server
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=20)


def run(
    command: list[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command in its own process group; on timeout kill the group and fail the test."""
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process)
        out, err = process.communicate()
        pytest.fail(
            f"timed out after {timeout:g} s: {shlex.join(command)}\nstdout:\n{out[-4000:]}\nstderr:\n{err[-4000:]}"
        )
    finally:
        kill_group(process)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def make_home(data_dir: Path, target: Path) -> Path:
    """A server state folder whose data is already prepared (the server then skips preparing)."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(data_dir, target / "data")
    return target


def add_token(home: Path, name: str) -> str:
    out = run([cli_executable(), "tokens", "add", name, "--data-dir", str(home)], timeout=120)
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip().splitlines()[-1]
    assert token.startswith("ar_"), out.stdout
    return token


@contextlib.contextmanager
def http_server(home: Path) -> Iterator[str]:
    """`autoresearch-mcp serve --http` on a free loopback port; yields the MCP URL."""
    port = free_port()
    log = (home / f"server-{port}.log").open("w")
    process = subprocess.Popen(
        serve_command(home, "--http", "--host", "127.0.0.1", "--port", str(port)),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_healthz(
            f"http://127.0.0.1:{port}", process, timeout=180, log=home / f"server-{port}.log"
        )
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        kill_group(process)
        log.close()


def scripted_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return run(
        [sys.executable, str(CLIENTS / "scripted_agent.py"), *args], timeout=EXPERIMENT_TIMEOUT
    )


def experiment_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("experiment ")]


def check_final_rows(rows: list[dict[str, Any]]) -> None:
    """Final statuses with their figures: metric_value for ok runs, train_seconds for all that ran."""
    for row in rows:
        assert row["status"] in FINAL_STATUSES, row
        assert row["verdict"], row
        if row["status"] == "ok":
            assert isinstance(row["metric_value"], float) and math.isfinite(row["metric_value"]), (
                row
            )
            assert row["metric_value"] > 0, row
        if row["status"] not in ("cancelled", "interrupted"):
            assert row["train_seconds"] is not None and row["train_seconds"] > 0, row


@pytest.fixture(scope="module")
def shared_home(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prepared server home for the tests that only read or run one experiment."""
    return make_home(data_dir, tmp_path_factory.mktemp("e2e") / "home")


@pytest.fixture(scope="module")
def shared_http(shared_home: Path) -> Iterator[str]:
    """One HTTP server for (b), (c) and (d); killed at the end of the module."""
    with http_server(shared_home) as url:
        yield url


def node_client(path: Path) -> str:
    if shutil.which("node") is None or not path.exists():
        pytest.fail(
            f"{path.name} is not installed: run `make tools` (npm install in tests/clients)"
        )
    return str(path)


# ---------------------------------------------------------------- (a) stdio, 3 experiments


def test_scripted_agent_stdio_runs_two_experiments(data_dir: Path, tmp_path: Path) -> None:
    home = make_home(data_dir, tmp_path / "home")
    out = scripted_agent(
        "-n",
        "2",
        "--seed",
        "7",
        "--server-log",
        str(tmp_path / "server.log"),
        "--",
        *serve_command(home, "--agent", "scripted"),
    )
    print(out.stdout)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    lines = experiment_lines(out.stdout)
    assert len(lines) == 2, out.stdout
    assert "history: 2 experiment(s) of this agent" in out.stdout

    store = Store(home / "history.sqlite")
    rows = store.list_experiments(agent="scripted", kind="experiment", limit=10, order="oldest")
    assert len(rows) == 2, rows
    assert len({row["code_hash"] for row in rows}) == 2  # two different changes
    check_final_rows(rows)
    for row, line in zip(rows, lines, strict=True):
        assert f"#{row['id']} " in line and f"status {row['status']}" in line, (row, line)


# ---------------------------------------------------------------- (b) HTTP and auth


def test_http_requires_a_valid_token_and_serves_the_agent(
    shared_home: Path, shared_http: str
) -> None:
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "e2e", "version": "0"},
        },
    }
    headers = {"Accept": "application/json, text/event-stream"}
    response = httpx.post(shared_http, json=initialize, headers=headers, timeout=60)
    assert response.status_code == 401, response.text
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")
    response = httpx.post(
        shared_http,
        json=initialize,
        headers={**headers, "Authorization": "Bearer ar_not-a-real-token"},
        timeout=60,
    )
    assert response.status_code == 401, response.text

    token = add_token(shared_home, "http-agent")
    response = httpx.post(
        shared_http,
        json=initialize,
        headers={**headers, "Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text

    out = scripted_agent("-n", "1", "--seed", "3", "--url", shared_http, "--token", token)
    print(out.stdout)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    assert "over HTTP" in out.stdout and len(experiment_lines(out.stdout)) == 1
    rows = Store(shared_home / "history.sqlite").list_experiments(agent="http-agent", limit=10)
    assert len(rows) == 1, rows
    check_final_rows(rows)

    bogus = scripted_agent("-n", "1", "--url", shared_http, "--token", "ar_bogus")
    assert bogus.returncode == 2, bogus.stdout


# ---------------------------------------------------------------- (c) MCP Inspector CLI


def inspector(target: list[str], *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """`mcp-inspector --cli --format json TARGET ... ARGS` with a throwaway HOME."""
    env = {**os.environ, "HOME": str(home), "MCP_CATALOG_PATH": str(home / "catalog.json")}
    return run(
        [node_client(INSPECTOR), "--cli", "--format", "json", *target, *args],
        timeout=CLIENT_TIMEOUT,
        env=env,
        cwd=home,
    )


@pytest.fixture(params=["stdio", "http"])
def inspector_target(
    request: pytest.FixtureRequest, shared_home: Path, tmp_path: Path
) -> list[str]:
    """How the Inspector reaches the server: a stdio command, or the URL with a bearer header."""
    if request.param == "stdio":
        return serve_command(shared_home, "--agent", "inspector")
    url = request.getfixturevalue("shared_http")
    token = add_token(shared_home, "inspector-http")
    return [url, "--transport", "http", "--header", f"Authorization: Bearer {token}"]


def test_inspector_lists_and_calls_tools(inspector_target: list[str], tmp_path: Path) -> None:
    home = tmp_path / "inspector-home"
    home.mkdir()

    listed = inspector(inspector_target, "--method", "tools/list", home=home)
    assert listed.returncode == 0, listed.stderr
    names = {tool["name"] for tool in json.loads(listed.stdout)["result"]["tools"]}
    assert {"run_experiment", "wait_experiment", "read_file", "edit_file", "get_history"} <= names

    read = inspector(
        inspector_target,
        "--method",
        "tools/call",
        "--tool-name",
        "read_file",
        "--tool-arg",
        "path=train.py",
        home=home,
    )
    assert read.returncode == 0, read.stderr
    result = json.loads(read.stdout)["result"]
    assert result["isError"] is False
    content = result["structuredContent"]
    assert content["path"] == "train.py" and content["access"] == "editable"
    assert "MATRIX_LR" in content["content"] and content["total_lines"] > 50

    history = inspector(
        inspector_target,
        "--method",
        "tools/call",
        "--tool-name",
        "get_history",
        "--tool-arg",
        "limit=5",
        home=home,
    )
    assert history.returncode == 0, history.stderr
    structured = json.loads(history.stdout)["result"]["structuredContent"]
    assert {"rows", "total", "leaderboard", "queue"} <= set(structured)

    refused = inspector(
        inspector_target,
        "--method",
        "tools/call",
        "--tool-name",
        "read_file",
        "--tool-arg",
        "path=../history.sqlite",
        home=home,
    )
    assert refused.returncode == 5, (refused.stdout, refused.stderr)  # isError
    assert "tool_is_error" in refused.stderr or "isError" in refused.stdout


def test_inspector_without_a_token_is_refused(shared_http: str, tmp_path: Path) -> None:
    for headers in ([], ["--header", "Authorization: Bearer ar_bogus"]):
        out = inspector(
            [shared_http, "--transport", "http", *headers, "--stored-auth-only"],
            "--method",
            "tools/list",
            home=tmp_path,
        )
        assert out.returncode not in (0, 5), out.stdout
        assert "auth_required" in out.stderr or "401" in out.stderr, out.stderr


# ---------------------------------------------------------------- (d) Claude Code


def claude_env(home: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "HOME": str(home), **QUIET_CLAUDE_ENV, **extra}


def claude(args: list[str], home: Path, project: Path, **extra: str) -> str:
    out = run(
        [node_client(CLAUDE), *args],
        timeout=CLIENT_TIMEOUT,
        env=claude_env(home, **extra),
        cwd=project,
    )
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def server_line(listing: str, name: str) -> str:
    lines = [line for line in listing.splitlines() if line.startswith(f"{name}:")]
    assert len(lines) == 1, listing
    return lines[0]


@pytest.fixture
def claude_home(tmp_path: Path) -> tuple[Path, Path]:
    """A throwaway HOME for Claude Code and a project folder inside it."""
    home = tmp_path / "claude-home"
    project = home / "project"
    project.mkdir(parents=True)
    return home, project


def test_claude_code_connects_over_stdio_and_http(
    claude_home: tuple[Path, Path], shared_home: Path, shared_http: str
) -> None:
    home, project = claude_home
    claude(
        ["mcp", "add", "autoresearch", "--", *serve_command(shared_home, "--agent", "claude")],
        home,
        project,
    )
    token = add_token(shared_home, "claude-http")
    claude(
        [
            "mcp",
            "add",
            "-t",
            "http",
            "autoresearch-http",
            shared_http,
            "--header",
            f"Authorization: Bearer {token}",
        ],
        home,
        project,
    )
    claude(
        [
            "mcp",
            "add",
            "-t",
            "http",
            "autoresearch-bogus",
            shared_http,
            "--header",
            "Authorization: Bearer ar_bogus",
        ],
        home,
        project,
    )
    listing = claude(["mcp", "list"], home, project)
    print(listing)
    assert "✔ Connected" in server_line(listing, "autoresearch")
    assert "✔ Connected" in server_line(listing, "autoresearch-http")
    bogus = server_line(listing, "autoresearch-bogus")
    assert "✔ Connected" not in bogus and "401" in bogus


def test_claude_code_project_scope_mcp_json(
    claude_home: tuple[Path, Path], shared_home: Path
) -> None:
    """clients/.mcp.json as shipped: `autoresearch-mcp` from PATH, approved via settings.json."""
    home, project = claude_home
    shutil.copy(CLIENTS / ".mcp.json", project / ".mcp.json")
    (home / ".claude").mkdir(parents=True, exist_ok=True)
    (home / ".claude" / "settings.json").write_text(
        json.dumps({"enableAllProjectMcpServers": True})
    )
    path = f"{Path(cli_executable()).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    listing = claude(["mcp", "list"], home, project, PATH=path, AUTORESEARCH_HOME=str(shared_home))
    print(listing)
    line = server_line(listing, "autoresearch")
    assert "serve --agent claude" in line and "✔ Connected" in line


def netns_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        probe = subprocess.run(
            ["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, timeout=30
        )
        return probe.returncode == 0
    return False


def test_claude_code_offline_in_its_own_network_namespace(
    claude_home: tuple[Path, Path], shared_home: Path
) -> None:
    """No network at all but loopback: the server (HTTP and stdio) and claude share a netns."""
    if not netns_available():
        pytest.fail(
            "unshare -n is not permitted here: this test needs its own network namespace (run as root)"
        )
    home, project = claude_home
    claude_bin = node_client(CLAUDE)
    port = free_port()
    token = add_token(shared_home, "claude-netns")
    url = f"http://127.0.0.1:{port}/mcp"
    server = shlex.join(
        serve_command(shared_home, "--http", "--host", "127.0.0.1", "--port", str(port))
    )
    stdio = shlex.join(serve_command(shared_home, "--agent", "claude-netns"))
    health = (
        f"{shlex.quote(sys.executable)} -c 'import time, urllib.request\n"
        "for _ in range(360):\n"
        "    try:\n"
        f'        urllib.request.urlopen("http://127.0.0.1:{port}/healthz", timeout=5); break\n'
        "    except Exception: time.sleep(0.5)'"
    )
    script = f"""
set -u
ip link set lo up
{server} > {shlex.quote(str(home / "netns-server.log"))} 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
{health}
{shlex.quote(claude_bin)} mcp add autoresearch -- {stdio} >/dev/null
{shlex.quote(claude_bin)} mcp add -t http autoresearch-http {url} --header {shlex.quote("Authorization: Bearer " + token)} >/dev/null
{shlex.quote(claude_bin)} mcp list
"""
    out = run(
        ["unshare", "-n", "bash", "-c", script],
        timeout=CLIENT_TIMEOUT + 180,
        env=claude_env(home),
        cwd=project,
    )
    listing = out.stdout + out.stderr
    print(listing)
    assert out.returncode == 0, listing
    assert "✔ Connected" in server_line(listing, "autoresearch")
    assert "✔ Connected" in server_line(listing, "autoresearch-http")
