"""The newest MCP surface through the SDK's client: tasks for the long tools, the in-client view
(MCP Apps) and live updates of resources, each in both protocol eras the server speaks.

Tasks need the 2026-07-28 revision (a 2025 client cannot carry a task answer): a client that
declares the extension gets a task handle, one that does not (and every legacy client) keeps
the handle + wait_experiment behaviour. Real runs where a run must finish (a few CPU-seconds);
a lab whose scheduler never starts where a task must stay `working`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client import advertise
from mcp.client.subscriptions import ResourceUpdated
from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID
from mcp.shared.exceptions import MCPError
from support import finished_run, lab_on_copy, template_lab
from task_client import CreateTaskResult, TasksClient, cancel_task, get_task

from server.app import build_server
from server.app_view import VIEW_URI
from server.lab import Lab
from server.live_updates import LEADERBOARD_URI
from server.record import SERVER_CONFIRMATION
from server.untrusted import block

pytestmark = pytest.mark.anyio

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
APPS_CLIENT = advertise(EXTENSION_ID, {"mimeTypes": [APP_MIME_TYPE]})
CRASHING = "import sys\nprint('about to fail', flush=True)\nsys.exit(7)\n"


# A 4 CPU-second budget (the machine is shared), no baseline runs, 4 eval windows.
SETTINGS: dict[str, Any] = {
    "budget_seconds": 4,
    "budget_kind": "cpu",
    "baseline_repeats": 0,
    "eval_windows": 4,
}


@pytest.fixture
def idle_lab(tmp_path: Path, data_dir: Path) -> Iterator[Lab]:
    """Nothing trains: runs stay queued (a task stays `working`)."""
    lab = lab_on_copy(
        tmp_path / "home", data_dir, **SETTINGS, start_scheduler=False, call_wait_seconds=1
    )
    yield lab
    lab.close()


@pytest.fixture(scope="module")
def training_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Real runs of the template target (about a second each): tasks and notifications are the
    server's part, the same for every target."""
    lab = template_lab(
        tmp_path_factory.mktemp("surface") / "home", **SETTINGS, call_wait_seconds=240
    )
    yield lab
    lab.close()


# ---------------------------------------------------------------- tasks


async def test_a_task_handle_follows_the_run_to_its_result(training_lab: Lab) -> None:
    async with Client(
        build_server(training_lab, default_agent="tasker"), mode="auto", extensions=[TasksClient()]
    ) as client:
        await client.list_tools()  # so the client checks the task's result against the schema
        result = await client.call_tool(
            "run_experiment", {"description": "baseline through a task"}
        )
    assert not result.is_error, result.content
    assert result.structured_content is not None
    row = result.structured_content
    assert row["status"] == "ok" and row["metric_value"] is not None
    assert training_lab.experiment(row["id"])["status"] == "ok"


async def test_a_failing_run_fails_its_task_with_the_reason(training_lab: Lab) -> None:
    async with Client(
        build_server(training_lab, default_agent="crasher"), mode="auto", extensions=[TasksClient()]
    ) as client:
        await client.call_tool("write_file", {"path": "train.py", "content": CRASHING})
        with pytest.raises(MCPError) as failure:
            await client.call_tool("run_experiment", {"description": "exits with 7"})
    assert "exit code 7" in failure.value.error.message
    data = failure.value.error.data
    assert data["status"] == "crash" and "about to fail" in (data["log_tail"] or "")


async def test_task_lifecycle_by_hand_and_cancel(idle_lab: Lab) -> None:
    server = build_server(idle_lab, default_agent="alice")
    async with Client(server, mode="auto", extensions=[TasksClient()]) as client:
        created = await client.session.call_tool(
            "run_experiment", {"description": "an idea"}, allow_claimed=True
        )
        assert isinstance(created, CreateTaskResult) and created.status == "working"
        assert created.poll_interval_ms == 1000  # a 4 s budget: polls 1 s apart (the floor)
        assert created.ttl_ms is not None and created.ttl_ms >= 24 * 3600 * 1000
        got = await get_task(client.session, created.task_id)
        assert got.status == "working" and got.result is None
        await cancel_task(client.session, created.task_id)
        got = await get_task(client.session, created.task_id)
        assert got.status == "cancelled"
    assert idle_lab.live_experiments("alice") == []
    (row,) = idle_lab.store.list_experiments(involving="alice", limit=5)
    assert row["status"] == "cancelled"
    # Another agent cannot read or cancel alice's task: "not found", like an unknown id.
    async with Client(
        build_server(idle_lab, default_agent="mallory"), mode="auto", extensions=[TasksClient()]
    ) as client:
        for call in (get_task, cancel_task):
            with pytest.raises(MCPError) as refused:
                await call(client.session, created.task_id)
            assert refused.value.code == types.INVALID_PARAMS
            assert "Task not found" in refused.value.error.message


async def test_confirm_experiment_answers_with_a_task(idle_lab: Lab) -> None:
    experiment_id, _ = idle_lab.submit("alice", "an idea to confirm")
    assert idle_lab.store.transition(experiment_id, ["queued"], status="ok", metric_value=2.0)
    async with Client(
        build_server(idle_lab, default_agent="bob"), mode="auto", extensions=[TasksClient()]
    ) as client:
        created = await client.session.call_tool(
            "confirm_experiment", {"experiment_id": experiment_id, "repeats": 2}, allow_claimed=True
        )
        assert isinstance(created, CreateTaskResult)
        got = await get_task(client.session, created.task_id)
        assert got.status == "working" and "0 of 2" in (got.status_message or "")
        await cancel_task(client.session, created.task_id)
        got = await get_task(client.session, created.task_id)
        assert got.status == "cancelled"


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_clients_without_tasks_keep_the_handle_and_wait(idle_lab: Lab, mode: str) -> None:
    async with Client(build_server(idle_lab, default_agent="bob"), mode=mode) as client:
        result = await client.call_tool(
            "run_experiment", {"description": "no tasks", "wait": False}
        )
    assert not result.is_error and result.structured_content is not None
    assert result.structured_content["status"] == "queued"
    assert "wait_experiment" in result.structured_content["next_step"]


# ---------------------------------------------------------------- the in-client view


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_view_is_a_ui_resource_named_by_get_leaderboard(idle_lab: Lab, mode: str) -> None:
    async with Client(
        build_server(idle_lab, default_agent="alice"), mode=mode, extensions=[APPS_CLIENT]
    ) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert tools["get_leaderboard"].meta == {"ui": {"resourceUri": VIEW_URI}}
        listed = {str(r.uri): r for r in (await client.list_resources()).resources}
        assert listed[VIEW_URI].mime_type == APP_MIME_TYPE
        (content,) = (await client.read_resource(VIEW_URI)).contents
        assert content.mime_type == APP_MIME_TYPE
        assert "<table id='leaderboard'>" in content.text


async def test_without_apps_the_leaderboard_stays_text(idle_lab: Lab) -> None:
    async with Client(build_server(idle_lab, default_agent="alice"), mode="legacy") as client:
        result = await client.call_tool("get_leaderboard", {})
    assert result.structured_content is not None and "entries" in result.structured_content
    (text,) = result.content
    assert isinstance(text, types.TextContent) and '"entries"' in text.text


@pytest.mark.e2e
async def test_view_renders_in_chromium(idle_lab: Lab) -> None:
    """The resource as a client reads it, rendered by a real browser: the leaderboard, the chart
    and the queue show; a later tool result from the host redraws the table; no request leaves."""
    from playwright.async_api import async_playwright

    base = idle_lab.baseline_files["train.py"]
    for n, (value, agent) in enumerate([(2.10, "alice"), (2.05, "bob"), (2.20, "alice")]):
        experiment_id, _ = idle_lab.submit(
            agent,
            f"idea {n} <script>alert(1)</script>",
            files={"train.py": base + f"UNUSED_{n} = {n}\n"},
        )
        assert idle_lab.store.transition(
            experiment_id,
            ["queued"],
            status="ok",
            metric_value=value,
            finished_at="2026-11-30T00:00:00Z",
        )
    idle_lab.submit("carol", "still queued", files={"train.py": base + "UNUSED_Q = 1\n"})
    async with Client(
        build_server(idle_lab, default_agent="viewer"), mode="auto", extensions=[APPS_CLIENT]
    ) as client:
        (content,) = (await client.read_resource(VIEW_URI)).contents
        board = (await client.call_tool("get_leaderboard", {})).structured_content
    assert board is not None and board["entries"]
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await browser.new_page(viewport={"width": 720, "height": 700})
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            await page.set_content(content.text)
            assert await page.locator("#leaderboard tbody tr").count() == 3
            assert await page.locator("#progress circle").count() == 3
            assert await page.locator("#queue tr").count() == 1
            assert "alert(1)" in await page.locator("#leaderboard").inner_text()  # shown as text
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "mcp-app-view.png"), full_page=True)
            entry = {**board["entries"][0], "description": "<b>redrawn</b>"}
            await page.evaluate(
                "(entry) => window.postMessage({method: 'ui/notifications/tool-result', "
                "params: {structuredContent: {entries: [entry]}}}, '*')",
                entry,
            )
            await page.wait_for_function(
                "document.querySelectorAll('#leaderboard tbody tr').length === 1"
            )
            cell = page.locator("#leaderboard tbody tr td").last
            assert await cell.inner_text() == "<b>redrawn</b>"  # agent text stays text
            assert requests == [] or all(r.startswith(("about:", "data:")) for r in requests)
        finally:
            await browser.close()
    assert (ARTIFACTS / "mcp-app-view.png").stat().st_size > 5_000


# ---------------------------------------------------------------- live updates


async def test_listeners_are_told_when_a_run_starts_and_finishes(training_lab: Lab) -> None:
    async with Client(build_server(training_lab, default_agent="watcher"), mode="auto") as client:
        await client.call_tool(
            "write_file",
            {
                "path": "train.py",
                # Trains its whole budget (STEPS raised): it is still live when the listener starts
                "content": training_lab.baseline_files["train.py"].replace(
                    "STEPS = 500 ", "STEPS = 10**9 ", 1
                )
                + "WATCHED = 1\n",
            },
        )
        queued = await client.call_tool("run_experiment", {"description": "watched", "wait": False})
        experiment_uri = f"experiment://{queued.structured_content['id']}"
        seen: list[str] = []
        async with client.listen(
            resource_subscriptions=[LEADERBOARD_URI, experiment_uri]
        ) as events:
            with anyio.fail_after(240):
                async for event in events:
                    assert isinstance(event, ResourceUpdated)
                    seen.append(event.uri)
                    if {LEADERBOARD_URI, experiment_uri} <= set(seen):
                        break  # the finish announces both (in either order)
    assert set(seen) == {LEADERBOARD_URI, experiment_uri}
    row = training_lab.experiment(queued.structured_content["id"])
    assert row["status"] == "ok", row["failure_reason"]


async def test_legacy_subscribers_are_told_too(idle_lab: Lab) -> None:
    received: list[str] = []
    told = anyio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            received.append(str(message.params.uri))
            told.set()

    server = build_server(idle_lab, default_agent="carol")
    async with Client(server, mode="legacy", message_handler=on_message) as client:
        queued = await client.call_tool("run_experiment", {"description": "x", "wait": False})
        experiment_id = queued.structured_content["id"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # resources/subscribe is deprecated in 2026
            await client.subscribe_resource(f"experiment://{experiment_id}")
        await client.call_tool("cancel_experiment", {"experiment_id": experiment_id})
        with anyio.fail_after(10):
            await told.wait()
    assert received == [f"experiment://{experiment_id}"]


async def test_subscriptions_are_bounded_and_checked(idle_lab: Lab) -> None:
    """Only the leaderboard and experiment://ID can be subscribed to, and one connection holds a
    bounded number: junk cannot fill the server's table and silence everyone else's updates."""
    from server.live_updates import MAX_SUBSCRIPTIONS_PER_CONNECTION

    async with Client(build_server(idle_lab, default_agent="junk"), mode="legacy") as client:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for uri in ("experiment://junk-1", "file:///etc/passwd", "experiment://0"):
                with pytest.raises(MCPError) as refused:
                    await client.subscribe_resource(uri)
                assert "cannot be subscribed to" in refused.value.error.message
            for n in range(1, MAX_SUBSCRIPTIONS_PER_CONNECTION + 1):
                await client.subscribe_resource(f"experiment://{n}")
            await client.subscribe_resource("experiment://1")  # again: not a new one
            with pytest.raises(MCPError) as refused:
                await client.subscribe_resource(LEADERBOARD_URI)
            assert "already holds" in refused.value.error.message


async def test_the_patches_index_is_a_resource(idle_lab: Lab) -> None:
    """The reviewable wins through MCP: a confirmed improvement on the path to the best is listed
    with its gain; its author reads her description plain, another agent as a block."""
    base = idle_lab.baseline_files["train.py"]
    win = finished_run(
        idle_lab, "alice", "warmup 200 steps", files={"train.py": base + "WARMUP = 200\n"},
        metric_value=1.9, verdict="improved",
    )  # fmt: skip
    for n in range(2):
        finished_run(
            idle_lab, "alice", f"{SERVER_CONFIRMATION} #{win}", files={"train.py": base + "WARMUP = 200\n"},
            kind="confirmation", confirms_id=win, metric_value=1.91, seed=300 + n, cpu_share=1.0,
        )  # fmt: skip
    for reader, shown in (
        ("alice", "warmup 200 steps"),
        ("bob", block("warmup 200 steps", "alice")),
    ):
        async with Client(build_server(idle_lab, default_agent=reader), mode="auto") as client:
            (content,) = (await client.read_resource("autoresearch://patches")).contents
        assert content.mime_type == "text/markdown"
        assert f"#{win} | alice |" in content.text, content.text
        assert f"\n- #{win}: {shown}\n" in content.text, content.text  # after the table
