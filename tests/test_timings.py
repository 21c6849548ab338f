"""The server's own response time per MCP tool (server/timings.py): real MCP clients over the
real HTTP app, then `GET /api/timings` with a token. A client that calls tools the server does not
have cannot grow the table: such calls are counted as "other". And the leaderboard's kept
answers, and the chart while a page reads it, rebuilt in the background when the record changes
(server/cache_warmer.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import (
    connect_over_http,
    finished_run,
    free_port,
    lab_on_copy,
    serve_app,
    wait_until,
)

from server import presentation
from server.auth import issue_token
from server.cache_warmer import CacheWarmer, Demand, WarmJob
from server.dashboard.data import chart_json
from server.lab import Lab
from server.models import LISTED_AGENTS
from server.store.read_cache import experiments_changes
from server.web import build_app

pytestmark = pytest.mark.e2e


@pytest.fixture
def served(tmp_path: Path, data_dir: Path) -> Iterator[tuple[str, Lab]]:
    lab = lab_on_copy(tmp_path / "home", data_dir, start_scheduler=False)
    port = free_port()
    try:
        with serve_app(build_app(lab, host="127.0.0.1", port=port), port) as url:
            yield url, lab
    finally:
        lab.close()


def timings(url: str, token: str, **params: Any) -> dict[str, Any]:
    response = httpx.get(
        url + "/api/timings", params=params, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.mark.anyio
async def test_each_tool_calls_time_is_kept_and_junk_names_stay_other(
    served: tuple[str, Lab],
) -> None:
    url, lab = served
    token = issue_token(lab.store, "alice")
    viewer = issue_token(lab.store, "watcher", role="viewer")
    assert httpx.get(url + "/api/timings").status_code == 401
    async with AsyncExitStack() as stack:
        client = await connect_over_http(stack, url, token, timeout=60)
        for _ in range(3):
            assert not (await client.call_tool("get_history", {})).is_error
        assert not (await client.call_tool("read_file", {"path": "train.py", "limit": 5})).is_error
        started = time.time()
        for n in range(4):
            result = await client.call_tool(f"no_such_tool_{n}", {})
            assert result.is_error
        assert not (await client.call_tool("get_leaderboard", {})).is_error

    figures = timings(url, viewer)
    by_tool = {row["tool"]: row for row in figures["tools"]}
    assert set(by_tool) == {"get_history", "read_file", "get_leaderboard", "other"}
    assert by_tool["get_history"]["calls"] == 3 and by_tool["other"]["calls"] == 4
    for row in figures["tools"]:
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["max_ms"] < 60_000, row
    assert figures["all"]["calls"] == 9

    later = timings(url, token, since=started)
    assert {row["tool"]: row["calls"] for row in later["tools"]} == {
        "other": 4,
        "get_leaderboard": 1,
    }
    assert timings(url, token, since=time.time() + 60)["all"] is None


def test_kept_answers_are_rebuilt_when_the_record_changes_before_anyone_asks(
    tmp_path: Path, data_dir: Path
) -> None:
    """The leaderboard after every change; the chart only while its readers ask for it."""
    lab = lab_on_copy(tmp_path / "home", data_dir, start_scheduler=False)
    chart_readers = Demand(seconds=0.5)
    chart_key = ("chart_json", id(lab))
    warmer = CacheWarmer(
        lab.store,
        [
            WarmJob(
                "leaderboard", lambda: presentation.leaderboard(lab, agents_listed=LISTED_AGENTS)
            ),
            WarmJob("chart", lambda: chart_json(lab), chart_readers.recent),
        ],
        0.05,
    )

    def kept(key: tuple[Any, ...]) -> tuple[bool, Any]:
        version = experiments_changes(lab.store.db)
        assert version is not None
        return lab.store.read_cache._fresh(key, version)

    warmer.start()
    try:
        wait_until(lambda: warmer.rebuilds["leaderboard"] == 1, timeout=30)
        finished_run(lab, "alice", "a wider mlp", metric_value=1.9)
        wait_until(lambda: warmer.rebuilds["leaderboard"] == 2, timeout=30)
        # The per-agent table (the costly part) is kept at the new version: no caller rebuilds it.
        found, rows = kept(("per_agent",))
        assert found and [row["agent"] for row in rows] == ["alice"]
        time.sleep(0.3)
        assert warmer.rebuilds == {"leaderboard": 2, "chart": 0}  # no change, no chart reader
        assert not kept(chart_key)[0]

        chart_readers.asked()  # a dashboard page fetched the chart
        wait_until(lambda: warmer.rebuilds["chart"] == 1, timeout=30)
        finished_run(lab, "bob", "a longer warmup", metric_value=1.8)
        wait_until(lambda: warmer.rebuilds == {"leaderboard": 3, "chart": 2}, timeout=30)
        found, chart = kept(chart_key)
        assert found and b"a longer warmup" in chart  # kept at the new version, before a reader

        time.sleep(0.6)  # the readers went away: the next change rebuilds the leaderboard only
        finished_run(lab, "carol", "tied embeddings", metric_value=1.85)
        wait_until(lambda: warmer.rebuilds["leaderboard"] == 4, timeout=30)
        time.sleep(0.3)
        assert warmer.rebuilds["chart"] == 2 and not kept(chart_key)[0]
    finally:
        warmer.stop()
        lab.close()


def test_an_open_page_gets_its_chart_rebuilt_before_it_asks(served: tuple[str, Lab]) -> None:
    """The wiring through the real app: a page polling /api/queue makes the chart a job of the
    background rebuild, so after the next result the chart is kept before the page fetches it."""
    url, lab = served
    viewer = issue_token(lab.store, "watcher", role="viewer")
    chart_key = ("chart_json", id(lab))

    def chart_kept() -> bool:
        version = experiments_changes(lab.store.db)
        return version is not None and lab.store.read_cache._fresh(chart_key, version)[0]

    finished_run(lab, "alice", "a wider mlp", metric_value=1.9)
    time.sleep(1.2)  # two rounds of the background thread: nobody reads the chart, none built
    assert not chart_kept()
    queue = httpx.get(url + "/api/queue", headers={"Authorization": f"Bearer {viewer}"})
    assert queue.status_code == 200
    finished_run(lab, "bob", "a longer warmup", metric_value=1.8)
    wait_until(chart_kept, timeout=30)
