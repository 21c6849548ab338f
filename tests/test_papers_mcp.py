"""search_papers and get_paper through the MCP tools: delimited untrusted text, papers linked
to the experiments they inspired, offline fallback. arXiv is a loopback Atom server."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from arxiv_fake import FakeArxiv, feed
from mcp import Client

from server.app import build_server
from server.lab import Lab, LabSettings

pytestmark = pytest.mark.anyio


@pytest.fixture
def fake_arxiv() -> Iterator[FakeArxiv]:
    server = FakeArxiv()
    yield server
    server.stop()


@pytest.fixture
def lab(tmp_path: Path, data_dir: Path, fake_arxiv: FakeArxiv) -> Iterator[Lab]:
    shutil.copytree(data_dir, tmp_path / "data")
    lab = Lab(
        LabSettings(
            home=tmp_path,
            budget_seconds=60,
            start_scheduler=False,
            arxiv_url_format=fake_arxiv.url_format,
            arxiv_min_interval_s=0.1,
        )
    )
    yield lab
    lab.close()


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_search_then_cite_then_get_paper(lab: Lab, fake_arxiv: FakeArxiv, mode: str) -> None:
    async with Client(build_server(lab, default_agent="alice"), mode=mode) as client:
        found = await client.call_tool(
            "search_papers", {"query": "muon optimizer", "max_results": 3}
        )
        assert not found.is_error, found.content
        result = found.structured_content
        assert result["source"] == "arxiv" and result["papers"]
        first = result["papers"][0]
        assert set(first) >= {"arxiv_id", "abs_url", "categories", "inspired_experiments"}
        assert (
            "summary" not in first and "title" not in first
        )  # authored text only inside the delimiters
        text = result["untrusted_text"]
        tags = re.findall(r"<(untrusted-paper-content-[0-9a-f]{8}) id=", text)
        assert len(set(tags)) == len(tags) == len(result["papers"])  # a tag of its own each
        assert all(text.count(f"</{tag}>") == 1 for tag in tags)
        assert "untrusted" in result["untrusted_notice"].lower()

        again = await client.call_tool(
            "search_papers", {"query": "muon optimizer", "max_results": 3}
        )
        assert again.structured_content["source"] == "cache"

        text_before = lab.workspace("alice").read_text("train.py")
        edited = await client.call_tool(
            "edit_file", {"path": "train.py", "old": "MATRIX_LR = 0.02", "new": "MATRIX_LR = 0.03"}
        )
        assert not edited.is_error and lab.workspace("alice").read_text("train.py") != text_before
        queued = await client.call_tool(
            "run_experiment",
            {
                "description": "muon lr from the paper",
                "wait": False,
                "paper_ids": [first["arxiv_id"]],
            },
        )
        experiment_id = queued.structured_content["id"]
        paper = await client.call_tool("get_paper", {"arxiv_id": first["arxiv_id"]})
        assert paper.structured_content["paper"]["inspired_experiments"] == [experiment_id]
        assert "<untrusted-paper-content" in paper.structured_content["untrusted_text"]
        detail = await client.call_tool("get_experiment", {"experiment_id": experiment_id})
        assert detail.structured_content["paper_ids"] == [first["arxiv_id"]]


async def test_instructions_in_an_abstract_stay_delimited(lab: Lab, fake_arxiv: FakeArxiv) -> None:
    fake_arxiv.body = feed("injection.xml")
    async with Client(build_server(lab, default_agent="alice")) as client:
        found = await client.call_tool("search_papers", {"query": "anything"})
        text = found.structured_content["untrusted_text"]
        start, end = (
            text.index("<untrusted-paper-content"),
            text.rindex("</untrusted-paper-content-"),
        )
        assert "ignore" in text[start:end].lower()
        assert "ignore" not in (text[:start] + text[end:]).lower().replace("untrusted", "")


async def test_offline_search_answers_from_the_cache_with_a_note(
    lab: Lab, fake_arxiv: FakeArxiv
) -> None:
    async with Client(build_server(lab, default_agent="alice")) as client:
        await client.call_tool("search_papers", {"query": "muon optimizer"})
        fake_arxiv.stop()
        lab.papers.cache_ttl_s = 0  # force a refetch: arXiv is now unreachable
        offline = await client.call_tool("search_papers", {"query": "muon optimizer"})
        assert not offline.is_error
        assert offline.structured_content["source"] == "offline-cache"
        assert offline.structured_content["note"].startswith("offline: cached results from")
        missing = await client.call_tool("search_papers", {"query": "never searched before"})
        assert missing.is_error
        assert "Nothing is cached for this query" in missing.content[0].text
