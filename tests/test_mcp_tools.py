"""Every MCP tool, resource and the prompt through an in-memory client, in both protocol eras.

Tests assert on what a client receives (structured content, is_error, the text the model
reads). Every refusal pins its text (or its key phrase) and checks that nothing changed: the
agent's train.py is byte-identical, no experiment was recorded, no claim was added.

Most tests use a lab whose scheduler is not started: experiments stay `queued` and nothing
trains, so queue, cancel, reuse and claim rules cost nothing. Finished experiments are
inserted into the store directly. Three real training runs (marked e2e) cover what only a
real run shows: the verdict after waiting, and a client that disconnects mid-run.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from support import template_lab

from sandbox.workspace import hash_files
from server.app import build_server
from server.lab import Lab, LabSettings, unified_diff
from server.store import FINAL_STATUSES, utc_now
from server.untrusted import block
from server.verdicts import t_quantile
from server.wire import compact_nullables

pytestmark = pytest.mark.anyio

MODES = ("auto", "legacy")
EVALUATE_PY = Path(__file__).resolve().parent.parent / "trainer" / "evaluate.py"
UNKNOWN_ID = 999_999
KNOB = "BATCH_SIZE = "  # the hyperparameter line of train.py that most tests change
READ_ONLY_TOOLS = {
    "similar_experiments",  # server/app_memory.py
    "get_briefing",  # server/app_memory.py
    "get_ablation",  # server/app_ablation.py
    "list_files",
    "read_file",
    "wait_experiment",
    "get_experiment",
    "get_history",
    "get_leaderboard",
    "search_papers",
    "get_paper",
    "get_ladder",
}
CHANGING_TOOLS = {
    "suggest",  # server/app_suggest.py
    "ablate",  # server/app_ablation.py
    "apply_patch",
    "edit_file",
    "write_file",
    "run_experiment",
    "cancel_experiment",
    "confirm_experiment",
    "checkout",
    "claim_idea",
    "promote",
    "combine",
}


# ---------------------------------------------------------------- labs, clients, helpers


def make_lab(home: Path, data_dir: Path, **overrides: Any) -> Lab:
    home.mkdir(parents=True, exist_ok=True)
    shutil.copytree(data_dir, home / "data")
    settings: dict[str, Any] = {
        "home": home,
        "budget_seconds": 4,
        "baseline_repeats": 0,
        "eval_windows": 4,
        "call_wait_seconds": 60,
    }
    settings.update(overrides)
    return Lab(LabSettings(**settings))


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def lab(tmp_path: Path, data_dir: Path) -> Iterator[Lab]:
    """A lab whose scheduler never starts: experiments stay queued and nothing trains."""
    lab = make_lab(tmp_path / "home", data_dir, start_scheduler=False)
    yield lab
    lab.close()


@pytest.fixture(scope="module")
def training_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A lab that really trains, on the template target (numpy; what the tools do with a run is
    the same for every target). The tests raise STEPS so that a run trains its whole budget. The
    budget is CPU time: the machine is shared. Calls wait up to 240 s for the same reason."""
    lab = template_lab(
        tmp_path_factory.mktemp("training") / "home",
        budget_seconds=4,
        baseline_repeats=0,
        eval_windows=4,
        budget_kind="cpu",
        call_wait_seconds=240,
    )
    yield lab
    lab.close()


@asynccontextmanager
async def connect(lab: Lab, mode: str, agent: str = "alice") -> AsyncIterator[Client]:
    async with Client(build_server(lab, default_agent=agent), mode=mode) as client:
        yield client


async def call(client: Client, tool: str, /, **arguments: Any) -> dict[str, Any]:
    """Call a tool that must succeed and return its structured content."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


def train_py(lab: Lab, agent: str = "alice") -> bytes:
    return lab.workspace(agent).read_bytes("train.py")


def lab_state(lab: Lab, agent: str) -> tuple[bytes, int, int, bytes]:
    return (
        train_py(lab, agent),
        lab.store.count_experiments(),
        len(lab.store.open_claims()),
        EVALUATE_PY.read_bytes(),
    )


async def refused(
    client: Client, lab: Lab, tool: str, /, agent: str = "alice", **arguments: Any
) -> str:
    """Call a tool that must refuse; check that nothing changed; return the text the model reads."""
    before = lab_state(lab, agent)
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    assert lab_state(lab, agent) == before
    [content] = result.content
    return content.text


def refusal(tool: str, message: str) -> str:
    """The text a client receives for a tool's refusal."""
    return f"Error executing tool {tool}: {message}"


def baseline_text(lab: Lab) -> str:
    return lab.baseline_files["train.py"]


def add_experiment(
    lab: Lab,
    agent: str,
    description: str,
    metric_value: float | None = None,
    *,
    status: str = "ok",
    kind: str = "experiment",
    code: dict[str, str] | None = None,
    parent_id: int | None = None,
    scale: str = "S",
) -> int:
    """A finished experiment written straight into the store, as the server would record it."""
    files = code or {"train.py": baseline_text(lab) + f"# {description}\n"}
    diff = unified_diff(lab.baseline_files, files)
    ok = status == "ok"
    return lab.store.create_experiment(
        agent=agent,
        kind=kind,
        status=status,
        description=description,
        metric_value=metric_value if ok else None,
        verdict=("within_noise" if kind == "experiment" else kind) if ok else "failed",
        code=files,
        code_hash=hash_files({k: v.encode() for k, v in files.items()}),
        diff_parent=diff,
        diff_baseline=diff,
        parent_id=parent_id,
        hardware=lab.hardware,
        budget_seconds=lab.level_budget(scale),
        budget_kind=lab.settings.budget_kind,
        scale=scale,
        seed=lab.settings.seed,
        flags=[],
        failure_reason=None if ok else "train.py raised RuntimeError",
        log_tail="step 1\nTraceback (most recent call last):\nRuntimeError: boom",
        started_at=utc_now(),
        finished_at=utc_now(),
    )


def line_of(lab: Lab, prefix: str) -> tuple[int, str]:
    """(1-based number, text) of the baseline train.py's line starting with prefix.

    Tests find the lines they change instead of hard-coding them: train.py evolves.
    """
    for number, line in enumerate(baseline_text(lab).splitlines(), start=1):
        if line.startswith(prefix):
            return number, line
    raise AssertionError(f"the baseline train.py has no line starting with {prefix!r}")


def knob(lab: Lab, value: str, prefix: str = KNOB) -> tuple[str, str]:
    """(the baseline line, the same line with the hyperparameter set to value)."""
    _, line = line_of(lab, prefix)
    return line, f"{prefix}{value}  # changed by a test"


def knob_code(lab: Lab, value: str, prefix: str = KNOB) -> str:
    """The baseline train.py with one hyperparameter changed."""
    old, new = knob(lab, value, prefix)
    return baseline_text(lab).replace(old + "\n", new + "\n", 1)


def knob_hunk(lab: Lab, old: str, new: str, header: str | None = None) -> str:
    """A one-hunk diff of train.py replacing the knob's line `old` by `new`, one context line each side."""
    number, _ = line_of(lab, KNOB)
    lines = baseline_text(lab).splitlines()
    header = header or f"@@ -{number - 1},3 +{number - 1},3 @@"
    return (
        "--- a/train.py\n+++ b/train.py\n"
        f"{header}\n {lines[number - 2]}\n-{old}\n+{new}\n {lines[number]}\n"
    )


async def set_knob(client: Client, lab: Lab, value: str, prefix: str = KNOB) -> None:
    """Set the agent's train.py to the baseline with one hyperparameter changed."""
    await call(client, "write_file", path="train.py", content=knob_code(lab, value, prefix))


# ---------------------------------------------------------------- files


async def test_list_files(lab: Lab, mode: str) -> None:
    async with connect(lab, mode) as client:
        listing = await call(client, "list_files")
    files = {f["name"]: f for f in listing["files"]}
    assert list(files) == ["train.py", "program.md", "prepare.py", "evaluate.py"]
    assert files["train.py"]["access"] == "editable"
    assert {files[n]["access"] for n in ("program.md", "prepare.py", "evaluate.py")} == {"readable"}
    assert files["train.py"]["size_bytes"] == len(lab.baseline_files["train.py"].encode())
    assert files["train.py"]["lines"] == len(baseline_text(lab).splitlines())
    assert listing["workspace_code_hash"] == lab.workspace("alice").code_hash()[:12]
    assert listing["parent_experiment_id"] is None  # no baseline measured in this lab


async def test_read_file_pages_with_line_numbers(lab: Lab, mode: str) -> None:
    lines = baseline_text(lab).splitlines()
    async with connect(lab, mode) as client:
        first = await call(client, "read_file", path="train.py", limit=100)
        assert first["content"].splitlines()[0] == f"1\t{lines[0]}"
        assert first["content"].splitlines()[-1] == f"100\t{lines[99]}"
        assert (first["first_line"], first["last_line"], first["total_lines"]) == (
            1,
            100,
            len(lines),
        )
        assert first["truncated"] is True
        assert first["next_offset"] == 101
        assert first["access"] == "editable"

        pages = [first]
        while pages[-1]["next_offset"] is not None:
            pages.append(
                await call(
                    client, "read_file", path="train.py", offset=pages[-1]["next_offset"], limit=100
                )
            )
        last = pages[-1]
        assert last["truncated"] is False
        assert last["last_line"] == len(lines)
        numbered = "\n".join(page["content"] for page in pages).splitlines()
        assert numbered == [f"{n}\t{line}" for n, line in enumerate(lines, start=1)]

        text = await refused(client, lab, "read_file", path="train.py", offset=len(lines) + 50)
        assert text == refusal(
            "read_file",
            f"offset {len(lines) + 50} is past the end of train.py ({len(lines)} lines); "
            f"use offset 1 to {len(lines)}",
        )


async def test_read_file_caps_long_lines_by_characters(lab: Lab, mode: str) -> None:
    # 60 lines of ~1 KB: over one 40,000-character page, under the 64 KiB editable-file cap
    long_file = "".join(f"X{n} = '{'a' * 990}'\n" for n in range(60))
    async with connect(lab, mode) as client:
        await call(client, "write_file", path="train.py", content=long_file)
        pages = [await call(client, "read_file", path="train.py", limit=2000)]
        while pages[-1]["next_offset"] is not None:
            offset = pages[-1]["next_offset"]
            pages.append(
                await call(client, "read_file", path="train.py", offset=offset, limit=2000)
            )
    assert len(pages) > 1 and pages[0]["truncated"] is True
    assert all(len(page["content"]) <= 40_000 for page in pages)
    assert [page["first_line"] for page in pages[1:]] == [
        page["last_line"] + 1 for page in pages[:-1]
    ]
    assert pages[-1]["last_line"] == 60


async def test_read_file_reads_reference_files(lab: Lab, mode: str) -> None:
    async with connect(lab, mode) as client:
        page = await call(client, "read_file", path="evaluate.py", limit=5)
    assert page["access"] == "readable"
    assert page["content"].splitlines()[0] == "1\t" + EVALUATE_PY.read_text().splitlines()[0]


async def test_edit_file(lab: Lab, mode: str) -> None:
    _, line = line_of(lab, KNOB)
    old, new = knob(lab, "6")
    async with connect(lab, mode) as client:
        edit = await call(client, "edit_file", path="train.py", old=old, new=new)
        assert edit["files"] == ["train.py"]
        assert (edit["hunks"], edit["lines_added"], edit["lines_removed"]) == (1, 1, 1)
        assert edit["method"] == "replace-string"
        assert edit["workspace_code_hash"] == lab.workspace("alice").code_hash()[:12]
        assert "run_experiment" in edit["next_step"]
        assert train_py(lab) == knob_code(lab, "6").encode()

        text = await refused(client, lab, "edit_file", path="train.py", old=line, new="x")
        assert text.startswith(
            refusal("edit_file", "old was not found in 'train.py'. Copy it exactly from the file")
        )
        assert "Closest line " in text  # where to look

        text = await refused(client, lab, "edit_file", path="train.py", old="import", new="x")
        assert "it must occur exactly once" in text


async def test_apply_patch_applies_good_diffs_and_recounts_hunks(lab: Lab, mode: str) -> None:
    number, _ = line_of(lab, KNOB)
    old, new = knob(lab, "3")
    async with connect(lab, mode) as client:
        applied = await call(client, "apply_patch", diff=knob_hunk(lab, old, new))
        assert applied["files"] == ["train.py"]
        assert (applied["hunks"], applied["lines_added"], applied["lines_removed"]) == (1, 1, 1)
        assert applied["workspace_code_hash"] == lab.workspace("alice").code_hash()[:12]
        assert train_py(lab) == knob_code(lab, "3").encode()

        # An LLM's usual mistake: the @@ counts do not match the hunk's lines.
        wrong_counts = knob_hunk(lab, new, old, header=f"@@ -{number - 1},7 +{number - 1},9 @@")
        reverted = await call(client, "apply_patch", diff=wrong_counts)
        assert reverted["files"] == ["train.py"]
        assert train_py(lab) == lab.baseline_files["train.py"].encode()


async def test_apply_patch_that_does_not_apply_names_the_hunk(lab: Lab, mode: str) -> None:
    number, line = line_of(lab, KNOB)
    old, new = knob(lab, "3")
    imagined = f"{KNOB}12345"  # a line the agent misremembers
    async with connect(lab, mode) as client:
        text = await refused(client, lab, "apply_patch", diff=knob_hunk(lab, imagined, new))
        assert text.startswith(
            refusal(
                "apply_patch",
                f"hunk 1 of 1 (@@ -{number - 1},3 +{number - 1},3 @@) for 'train.py' does not "
                "match the file: its context and '-' lines were not found.",
            )
        )
        assert "Nothing was changed." in text
        assert f"{number:>6} | {imagined}" in text  # what the hunk expected
        assert f"{number:>6} | {line}" in text  # what the file really says there

        # Two hunks, the second one wrong: the first is not applied either.
        second = f"@@ -{number + 5},1 +{number + 5},1 @@\n-{imagined}\n+{new}\n"
        text = await refused(client, lab, "apply_patch", diff=knob_hunk(lab, old, new) + second)
        assert (
            f"hunk 2 of 2 (@@ -{number + 5},1 +{number + 5},1 @@) for 'train.py' does not match"
            in text
        )
        assert train_py(lab) == lab.baseline_files["train.py"].encode()


async def test_write_file(lab: Lab, mode: str) -> None:
    content = knob_code(lab, "12")
    async with connect(lab, mode) as client:
        written = await call(client, "write_file", path="train.py", content=content)
        assert written["method"] == "whole-file"
        assert (written["lines_added"], written["lines_removed"]) == (1, 1)
        assert train_py(lab) == content.encode()
        text = await refused(client, lab, "write_file", path="train.py", content=content)
        assert text == refusal(
            "write_file", "content is identical to the current 'train.py', so nothing would change."
        )


HINT = "Use a name from list_files(), e.g. 'train.py'."
LISTING = "Editable: train.py. Read-only: program.md, prepare.py, evaluate.py."
BAD_NAMES = [
    ("nope.py", f"'nope.py' is not a file of this workspace. {LISTING}"),
    ("../x", f"'../x' is refused: paths may not contain '..'. {HINT}"),
    ("../train.py", f"'../train.py' is refused: paths may not contain '..'. {HINT}"),
    ("/etc/passwd", f"'/etc/passwd' is refused: absolute paths are not allowed. {HINT}"),
    (
        "sub/train.py",
        f"'sub/train.py' is refused: only plain file names are allowed, no folders. {HINT}",
    ),
]


@pytest.mark.parametrize(("name", "message"), BAD_NAMES)
async def test_bad_file_names_are_refused_by_every_file_tool(
    lab: Lab, mode: str, name: str, message: str
) -> None:
    async with connect(lab, mode) as client:
        assert await refused(client, lab, "read_file", path=name) == refusal("read_file", message)
        for tool, arguments in (
            ("edit_file", {"old": "import", "new": "export"}),
            ("write_file", {"content": "print('hi')\n"}),
        ):
            text = await refused(client, lab, tool, path=name, **arguments)
            assert text == refusal(tool, message)
        diff = f"--- a/{name}\n+++ b/{name}\n@@ -1,1 +1,1 @@\n-x\n+y\n"
        if name.startswith("/"):
            diff = f"--- {name}\n+++ {name}\n@@ -1,1 +1,1 @@\n-x\n+y\n"
        assert await refused(client, lab, "apply_patch", diff=diff) == refusal(
            "apply_patch", message
        )


async def test_reference_files_cannot_be_changed(lab: Lab, mode: str) -> None:
    read_only = (
        "'evaluate.py' is read-only: it is a reference file and cannot be changed. "
        "Only these files can be edited: train.py."
    )
    touching_evaluate = "--- a/evaluate.py\n+++ b/evaluate.py\n@@ -1,1 +1,1 @@\n-x\n+y\n"
    async with connect(lab, mode) as client:
        text = await refused(client, lab, "apply_patch", diff=touching_evaluate)
        assert text == refusal("apply_patch", read_only)
        # Mixed with a good hunk for train.py: refused whole, train.py untouched.
        text = await refused(
            client, lab, "apply_patch", diff=knob_hunk(lab, *knob(lab, "3")) + touching_evaluate
        )
        assert text == refusal("apply_patch", read_only)
        text = await refused(client, lab, "write_file", path="evaluate.py", content="cheat = 1\n")
        assert text == refusal("write_file", read_only)
        text = await refused(client, lab, "edit_file", path="./evaluate.py", old="def", new="x")
        assert text == refusal("edit_file", read_only)


@pytest.mark.parametrize(
    ("tool", "arguments", "phrases"),
    [
        ("read_file", {"path": 123}, ["path", "Input should be a valid string"]),
        ("read_file", {}, ["path", "Field required"]),
        ("read_file", {"path": "train.py", "limit": 0}, ["limit", "greater than or equal to 1"]),
        ("read_file", {"path": "train.py", "limit": 5000}, ["less than or equal to 2000"]),
        ("read_file", {"path": "train.py", "offset": 0}, ["offset", "greater than or equal to 1"]),
        ("get_history", {"limit": 101}, ["limit", "less than or equal to 100"]),
        ("get_history", {"offset": -1}, ["offset", "greater than or equal to 0"]),
        ("get_history", {"scope": "everyone"}, ["scope", "Input should be 'mine' or 'all'"]),
        ("get_history", {"query": "q" * 201}, ["query", "at most 200 characters"]),
        ("get_experiment", {"experiment_id": "abc"}, ["experiment_id", "valid integer"]),
        ("run_experiment", {}, ["description", "Field required"]),
        ("run_experiment", {"description": "x", "paper_ids": "2401.01234"}, ["valid list"]),
        ("edit_file", {"path": "train.py", "old": "import"}, ["new", "Field required"]),
        ("apply_patch", {"diff": ["--- a/train.py"]}, ["diff", "valid string"]),
        ("checkout", {"ref": "main"}, ["ref", "Input should be 'baseline' or 'best'"]),
        ("confirm_experiment", {"experiment_id": 1, "repeats": 11}, ["less than or equal to 10"]),
        ("confirm_experiment", {"experiment_id": 1, "repeats": 0}, ["greater than or equal to 1"]),
        ("wait_experiment", {"experiment_id": 1, "timeout_seconds": 0}, ["greater than 0"]),
        ("get_leaderboard", {"limit": 51}, ["less than or equal to 50"]),
    ],
)
async def test_malformed_arguments_are_refused(
    lab: Lab, mode: str, tool: str, arguments: dict[str, Any], phrases: list[str]
) -> None:
    async with connect(lab, mode) as client:
        text = await refused(client, lab, tool, **arguments)
    assert text.startswith(refusal(tool, ""))
    for phrase in phrases:
        assert phrase in text


# ---------------------------------------------------------------- experiments (nothing trains)


async def test_run_experiment_without_waiting_and_one_live_at_a_time(lab: Lab, mode: str) -> None:
    async with connect(lab, mode) as client:
        await set_knob(client, lab, "3")
        queued = await call(client, "run_experiment", description="depth 4 -> 3", wait=False)
        experiment_id = queued["id"]
        assert queued["status"] == "queued"
        assert queued["agent"] == "alice"
        assert queued["metric_value"] is None and queued["verdict"] is None
        assert queued["progress"] == "queued, position 1"
        assert queued["next_step"] == (
            f"still queued: call wait_experiment({experiment_id}) (each call waits up to 60 s)"
        )

        await set_knob(client, lab, "2")
        text = await refused(client, lab, "run_experiment", description="depth 2", wait=False)
        assert text == refusal(
            "run_experiment",
            f"experiment #{experiment_id} is still queued; you may have 1 live at a time. "
            f"Call wait_experiment({experiment_id}) for its result, "
            f"or cancel_experiment({experiment_id})",
        )

        waited = await call(
            client, "wait_experiment", experiment_id=experiment_id, timeout_seconds=0.2
        )
        assert waited["status"] == "queued"
        assert waited["next_step"].startswith(
            f"still queued: call wait_experiment({experiment_id})"
        )

        history = await call(client, "get_history")
        assert history["queue"] == [
            {"id": experiment_id, "agent": "alice", "status": "queued", "position": 1}
        ]
        assert [row["id"] for row in history["rows"]] == [experiment_id]
        assert history["rows"][0]["description"] == "depth 4 -> 3"


async def test_the_same_code_again_is_reused(lab: Lab, mode: str) -> None:
    async with connect(lab, mode, agent="alice") as alice, connect(lab, mode, agent="bob") as bob:
        first = await call(
            alice, "run_experiment", description="the baseline, as shipped", wait=False
        )
        count = lab.store.count_experiments()
        again = await call(bob, "run_experiment", description="the baseline again", wait=False)
        assert lab.store.count_experiments() == count  # nothing queued
        assert again["id"] == first["id"]
        assert again["reused_from"] == first["id"]
        assert again["agent"] == "alice"
        # alice's words reach bob as data, in a labelled block (server/untrusted.py)
        assert again["description"] == block("the baseline, as shipped", "alice")
        # The truth: the earlier run is still queued (this lab never trains): wait for it.
        assert again["next_step"].startswith(
            "nothing new was queued: the same code (byte for byte) is already "
            f"queued as #{first['id']} by alice with the same settings: "
            f"wait_experiment({first['id']}) for its result"
        )
        # Bob's own description is on record, pointing at the run that answered it.
        (request,) = lab.store.requests.search(agent="bob")
        assert request["id"] == again["request_id"]
        assert (request["description"], request["earlier_id"]) == (
            "the baseline again",
            first["id"],
        )
        # Bob's workspace now descends from the run whose result he was given.
        assert (await call(bob, "list_files"))["parent_experiment_id"] == first["id"]


async def test_run_experiment_refusals(lab: Lab, mode: str) -> None:
    async with connect(lab, mode) as client:
        await set_knob(client, lab, "3")
        empty = refusal(
            "run_experiment",
            "description is empty; say in one line what this experiment changes and why, "
            "e.g. 'warmdown 0.5 -> 0.7: longer decay helps at short budgets'",
        )
        assert await refused(client, lab, "run_experiment", description="") == empty
        assert await refused(client, lab, "run_experiment", description=" \n\t ") == empty
        assert await refused(client, lab, "run_experiment", description="x" * 501) == refusal(
            "run_experiment",
            "description is 501 characters; use at most 500 "
            "(one line: the change and the hypothesis)",
        )
        text = await refused(
            client, lab, "run_experiment", description="muon lr", paper_ids=["not-a-paper"]
        )
        assert text == refusal(
            "run_experiment",
            "paper id 'not-a-paper' is not an arXiv id; send ids like '2401.01234' (from search_papers)",
        )
        # A good paper id is accepted and recorded.
        run = await call(
            client,
            "run_experiment",
            description="depth 3, as in the paper",
            wait=False,
            paper_ids=["arXiv:2401.01234v2"],
        )
        detail = await call(client, "get_experiment", experiment_id=run["id"])
        assert detail["paper_ids"] == ["2401.01234"]


async def test_get_experiment_with_diff_log_and_lineage(lab: Lab, mode: str) -> None:
    first = add_experiment(lab, "alice", "depth 3", 1.90)
    second = add_experiment(lab, "bob", "depth 3, width 192", 1.85, parent_id=first)
    failed = add_experiment(lab, "bob", "width 4096", status="crash", parent_id=second)
    async with connect(lab, mode) as client:
        plain = await call(client, "get_experiment", experiment_id=second)
        assert plain["id"] == second and plain["agent"] == "bob"
        assert plain["status"] == "ok" and plain["metric_value"] == 1.85
        assert plain["diff_vs_parent"] is None and plain["diff_vs_baseline"] is None
        assert plain["log_tail"] is None  # a success shows its log only when asked
        assert [step["id"] for step in plain["lineage"]] == [second, first]
        assert plain["code_hash"] and len(plain["code_hash"]) == 12

        full = await call(
            client, "get_experiment", experiment_id=second, include_diff=True, include_log=True
        )
        # bob's diff and his code's log reach alice as data, in labelled blocks
        row = lab.experiment(second)
        assert full["diff_vs_baseline"] == block(row["diff_baseline"], "bob")
        assert "+# depth 3, width 192" in full["diff_vs_baseline"]
        assert re.match(
            r'<(untrusted-agent-content-[0-9a-f]{8}) author="bob">\n--- a/train.py\n\+\+\+ b/train.py\n'
            r".*\n</\1>\Z",
            full["diff_vs_parent"],
            re.DOTALL,
        )
        assert re.search(
            r"RuntimeError: boom\n</untrusted-agent-content-[0-9a-f]{8}>\Z", full["log_tail"]
        )
        assert [s["description"] for s in full["lineage"]] == [
            block("depth 3, width 192", "bob"),
            "depth 3",  # alice's own
        ]

        crash = await call(client, "get_experiment", experiment_id=failed)
        assert crash["status"] == "crash" and crash["verdict"] == "failed"
        assert crash["failure_reason"] == block("train.py raised RuntimeError", "bob")
        assert "RuntimeError: boom" in crash["log_tail"]  # a failure always shows its log
        assert [step["id"] for step in crash["lineage"]] == [failed, second, first]


async def test_get_history_scope_order_query_paging_status(lab: Lab, mode: str) -> None:
    ids: dict[str, list[int]] = {"alice": [], "bob": []}
    for n in range(25):
        agent = "alice" if n % 5 else "bob"
        topic = "warmdown" if n % 2 else "rope base"
        ids[agent].append(add_experiment(lab, agent, f"{topic} try {n}", 2.0 - n / 100))
    crashes = [add_experiment(lab, "bob", "depth 64 crashes", status="crash") for _ in range(2)]
    everything = sorted(ids["alice"] + ids["bob"] + crashes)

    async with connect(lab, mode) as client:
        recent = await call(client, "get_history", limit=10)
        assert [r["id"] for r in recent["rows"]] == everything[::-1][:10]
        assert recent["total"] == 27
        assert recent["next_offset"] == 10
        paged = [r["id"] for r in recent["rows"]]
        offset = recent["next_offset"]
        while offset is not None:
            page = await call(client, "get_history", limit=10, offset=offset)
            paged += [r["id"] for r in page["rows"]]
            offset = page["next_offset"]
        assert paged == everything[::-1]

        mine = await call(client, "get_history", scope="mine", limit=100)
        assert {r["agent"] for r in mine["rows"]} == {"alice"}
        assert mine["total"] == len(ids["alice"]) == 20

        best = await call(client, "get_history", order="best", limit=100)
        values = [r["metric_value"] for r in best["rows"]]
        assert values[:25] == sorted(values[:25])
        assert values[25:] == [None, None]  # crashes last

        crashed = await call(client, "get_history", status="crash")
        assert [r["id"] for r in crashed["rows"]] == crashes[::-1]
        assert crashed["total"] == 2

        found = await call(client, "get_history", query="warmdown", limit=5)
        assert len(found["rows"]) == 5
        assert all("warmdown" in r["description"] for r in found["rows"])
        assert found["total"] == 12  # every match, not just this page
        assert found["next_offset"] == 5
        # Diffs are searched too: only the diff of this one says 77.
        vague = add_experiment(
            lab,
            "carol",
            "a vaguely described change",
            1.99,
            code={"train.py": knob_code(lab, "77")},
        )
        by_diff = await call(client, "get_history", query="77")
        assert [r["id"] for r in by_diff["rows"]] == [vague] and by_diff["total"] == 1
        # Text an agent wrote is never FTS syntax.
        quoted = await call(client, "get_history", query='lr" OR (x')
        assert quoted["rows"] == [] and quoted["total"] == 0

        assert recent["leaderboard"][0]["metric_value"] == min(v for v in values if v is not None)

        # One scale level of the promotion ladder.
        larger = add_experiment(lab, "bob", "warmdown at level M", 1.5, scale="M")
        level = await call(client, "get_history", level="M")
        assert [r["id"] for r in level["rows"]] == [larger]
        assert level["total"] == 1
        assert [e["id"] for e in level["leaderboard"]] == [larger]
        assert (await call(client, "get_history", level="M", query="warmdown"))["total"] == 1
        text = await refused(client, lab, "get_history", level="XL")
        assert text == refusal(
            "get_history", "scale level 'XL' does not exist; the levels are S, M, L"
        )


async def test_get_leaderboard(lab: Lab, mode: str) -> None:
    worse = add_experiment(lab, "alice", "wider", 1.95)
    better = add_experiment(lab, "bob", "deeper", 1.80)
    add_experiment(lab, "bob", "crashes", status="crash")
    async with connect(lab, mode) as client:
        board = await call(client, "get_leaderboard")
        resource = json.loads(
            (await client.read_resource("autoresearch://leaderboard")).contents[0].text
        )
    assert [(e["rank"], e["id"], e["confirmed"]) for e in board["entries"]] == [
        (1, better, False),
        (2, worse, False),
    ]
    assert {a["agent"]: a["best_id"] for a in board["per_agent"]} == {"bob": better, "alice": worse}
    assert board["noise"]["measured"] is False
    # one run against no measured reference yet: the screen's quantile of one run's noise
    screen = t_quantile(1 - lab.settings.screen_share, math.inf) * board["noise"]["sd"] * 2**0.5
    assert board["noise"]["threshold"] == pytest.approx(screen, abs=1e-5)
    assert "fresh seeds" in board["noise"]["rule"]
    assert [e["id"] for e in resource["entries"]] == [better, worse]


async def test_checkout(lab: Lab, mode: str) -> None:
    other = {"train.py": knob_code(lab, "320")}
    best = {"train.py": knob_code(lab, "5")}
    other_id = add_experiment(lab, "bob", "width 320", 1.95, code=other)
    best_id = add_experiment(lab, "bob", "depth 5", 1.80, code=best)
    async with connect(lab, mode) as client:
        neither = refusal(
            "checkout",
            "send exactly one of experiment_id (a number from get_history) or ref ('baseline' or 'best')",
        )
        await set_knob(client, lab, "2")
        assert await refused(client, lab, "checkout") == neither
        assert await refused(client, lab, "checkout", experiment_id=other_id, ref="best") == neither
        assert await refused(client, lab, "checkout", experiment_id=UNKNOWN_ID) == refusal(
            "checkout", f"experiment #{UNKNOWN_ID} does not exist; get_history lists experiment ids"
        )

        result = await call(client, "checkout", experiment_id=other_id)  # another agent's
        assert result["experiment_id"] == other_id and result["files"] == ["train.py"]
        assert train_py(lab) == other["train.py"].encode()
        assert f"experiment #{other_id}" in result["note"]
        assert (await call(client, "list_files"))["parent_experiment_id"] == other_id

        result = await call(client, "checkout", ref="best")
        assert result["experiment_id"] == best_id
        assert train_py(lab) == best["train.py"].encode()
        assert result["workspace_code_hash"] == lab.workspace("alice").code_hash()[:12]

        result = await call(client, "checkout", ref="baseline")
        assert result["experiment_id"] is None  # no baseline run in this lab
        assert "the baseline" in result["note"]
        assert train_py(lab) == lab.baseline_files["train.py"].encode()


async def test_checkout_best_before_any_result_is_refused(lab: Lab, mode: str) -> None:
    async with connect(lab, mode) as client:
        assert await refused(client, lab, "checkout", ref="best") == refusal(
            "checkout",
            "there is no successful experiment yet; checkout ref='baseline' or run one first",
        )


async def test_cancel_experiment(lab: Lab, mode: str) -> None:
    finished = add_experiment(lab, "alice", "depth 3", 1.9)
    async with connect(lab, mode, agent="alice") as alice, connect(lab, mode, agent="bob") as bob:
        queued = await call(alice, "run_experiment", description="as shipped", wait=False)
        text = await refused(bob, lab, "cancel_experiment", agent="bob", experiment_id=queued["id"])
        assert text == refusal(
            "cancel_experiment",
            f"experiment #{queued['id']} belongs to alice; you can cancel only your own",
        )
        cancelled = await call(alice, "cancel_experiment", experiment_id=queued["id"])
        assert cancelled == {
            "id": queued["id"],
            "status": "cancelled",
            "note": "removed from the queue",
        }
        assert lab.experiment(queued["id"])["status"] == "cancelled"
        record = await call(alice, "get_experiment", experiment_id=queued["id"])
        assert record["status"] == "cancelled"

        for experiment_id, status in ((queued["id"], "cancelled"), (finished, "ok")):
            text = await refused(alice, lab, "cancel_experiment", experiment_id=experiment_id)
            assert text == refusal(
                "cancel_experiment",
                f"experiment #{experiment_id} already finished ({status}); nothing to cancel",
            )
        # With the queue empty again, alice may run.
        again = await call(alice, "run_experiment", description="as shipped, again", wait=False)
        assert again["status"] == "queued" and again["reused_from"] is None


async def test_claim_idea(lab: Lab, mode: str) -> None:
    async with connect(lab, mode, agent="alice") as alice, connect(lab, mode, agent="bob") as bob:
        for text in ("", "   "):
            assert await refused(alice, lab, "claim_idea", text=text) == refusal(
                "claim_idea",
                "the idea is empty; describe in one line what you are about to try, "
                "e.g. 'RoPE base 10k -> 50k'",
            )
        assert await refused(alice, lab, "claim_idea", text="y" * 301) == refusal(
            "claim_idea", "the idea is 301 characters; use at most 300"
        )
        claimed = await call(alice, "claim_idea", text="RoPE base 10k -> 50k")
        assert claimed["claim"]["agent"] == "alice"
        assert claimed["claim"]["text"] == "RoPE base 10k -> 50k"
        assert "released when you run your next experiment" in claimed["note"]
        await call(bob, "claim_idea", text="warmdown 0.5 -> 0.7")

        seen_by_bob = await call(bob, "get_history")
        assert {(c["agent"], c["text"]) for c in seen_by_bob["open_claims"]} == {
            ("alice", block("RoPE base 10k -> 50k", "alice")),  # another agent's words: data
            ("bob", "warmdown 0.5 -> 0.7"),
        }
        await set_knob(alice, lab, "50_000.0", "ROPE_BASE = ")
        await call(alice, "run_experiment", description="RoPE base 10k -> 50k", wait=False)
        after = await call(bob, "get_history")
        assert [(c["agent"], c["text"]) for c in after["open_claims"]] == [
            ("bob", "warmdown 0.5 -> 0.7")
        ]


async def test_confirm_experiment(lab: Lab, mode: str) -> None:
    good = add_experiment(lab, "alice", "depth 3", 1.9)
    crashed = add_experiment(lab, "alice", "depth 300", status="crash")
    baseline = add_experiment(lab, "server", "baseline measurement", 2.0, kind="baseline")
    async with connect(lab, mode) as client:
        assert await refused(
            client, lab, "confirm_experiment", experiment_id=UNKNOWN_ID
        ) == refusal(
            "confirm_experiment",
            f"experiment #{UNKNOWN_ID} does not exist; get_history lists experiment ids",
        )
        assert await refused(client, lab, "confirm_experiment", experiment_id=crashed) == refusal(
            "confirm_experiment",
            f"experiment #{crashed} is crash; only a successful run can be confirmed",
        )
        assert await refused(client, lab, "confirm_experiment", experiment_id=baseline) == refusal(
            "confirm_experiment",
            f"experiment #{baseline} is a baseline run; confirm the experiment itself",
        )
        for repeats in (0, 11, -3):
            text = await refused(
                client, lab, "confirm_experiment", experiment_id=good, repeats=repeats
            )
            assert "repeats" in text

        queued = await call(client, "confirm_experiment", experiment_id=good, repeats=2)
        runs = queued["result"]
        assert len(runs) == 2
        assert {r["kind"] for r in runs} == {"confirmation"}
        assert {r["status"] for r in runs} == {"queued"}
        assert len({r["seed"] for r in runs}) == 2 and lab.settings.seed not in {
            r["seed"] for r in runs
        }
        assert all(r["description"].startswith(f"confirm #{good} (seed ") for r in runs)


async def test_unknown_experiment_ids_are_refused(lab: Lab, mode: str) -> None:
    missing = f"experiment #{UNKNOWN_ID} does not exist; get_history lists experiment ids"
    async with connect(lab, mode) as client:
        for tool in ("get_experiment", "wait_experiment", "cancel_experiment"):
            text = await refused(client, lab, tool, experiment_id=UNKNOWN_ID)
            assert text == refusal(tool, missing)


async def test_get_paper_refuses_a_bad_id(lab: Lab, mode: str) -> None:
    async with connect(lab, mode) as client:
        text = await refused(client, lab, "get_paper", arxiv_id="see my blog")
    assert text == refusal(
        "get_paper",
        "'see my blog' is not an arXiv id. Send a new-style id like '2401.01234' (optionally with "
        "a version, '2401.01234v2') or an old-style id like 'cs/0112017'; search_papers lists "
        "the ids of matching papers.",
    )


async def test_ladder_tools_refuse_what_cannot_climb(lab: Lab, mode: str) -> None:
    unconfirmed = add_experiment(lab, "alice", "depth 3", 1.9)
    crashed = add_experiment(lab, "alice", "depth 300", status="crash")
    async with connect(lab, mode) as client:
        ladder = await call(client, "get_ladder", experiment_id=unconfirmed)
        assert ladder["experiment_id"] == unconfirmed and ladder["level"] == "S"
        assert ladder["confirmed"] is None and ladder["promotions"] == []
        assert await refused(client, lab, "get_ladder", experiment_id=UNKNOWN_ID) == refusal(
            "get_ladder",
            f"experiment #{UNKNOWN_ID} does not exist; get_history lists experiment ids",
        )
        assert await refused(client, lab, "promote", experiment_id=unconfirmed) == refusal(
            "promote",
            f"experiment #{unconfirmed} is not a confirmed improvement (verdict within_noise): only "
            "wins the server confirmed on fresh seeds (verdict improved) are promoted",
        )
        assert await refused(client, lab, "combine", experiment_ids=[unconfirmed]) == refusal(
            "combine", "send two or more distinct experiment ids to combine"
        )
        text = await refused(client, lab, "combine", experiment_ids=[unconfirmed, crashed])
        assert text == refusal(
            "combine", f"experiment #{crashed} is crash; combine only successful experiments"
        )


# ---------------------------------------------------------------- resources, prompt, tools/list


async def test_resources(lab: Lab, mode: str) -> None:
    finished = add_experiment(lab, "bob", "depth 5", 1.8)
    async with connect(lab, mode) as client:
        await set_knob(client, lab, "7")
        listed = {str(r.uri) for r in (await client.list_resources()).resources}
        assert {"autoresearch://program.md", "autoresearch://leaderboard"} <= listed
        templates = {
            t.uri_template for t in (await client.list_resource_templates()).resource_templates
        }
        assert templates == {"autoresearch://workspace/{name}", "experiment://{experiment_id}"}

        program = (await client.read_resource("autoresearch://program.md")).contents[0]
        assert program.mime_type == "text/markdown"
        assert "Budget per experiment: 4 s (cpu clock) on cpu." in program.text
        assert "{goal}" not in program.text and "{budget}" not in program.text

        board = json.loads(
            (await client.read_resource("autoresearch://leaderboard")).contents[0].text
        )
        assert [e["id"] for e in board["entries"]] == [finished]
        assert board["noise"]["budget_seconds"] == 4

        own = (await client.read_resource("autoresearch://workspace/train.py")).contents[0].text
        assert own == train_py(lab).decode()
        assert f"{KNOB}7  # changed by a test" in own
        reference = (await client.read_resource("autoresearch://workspace/evaluate.py")).contents[0]
        assert reference.text == EVALUATE_PY.read_text()

        record = json.loads(
            (await client.read_resource(f"experiment://{finished}")).contents[0].text
        )
        assert record["id"] == finished and record["metric_value"] == 1.8
        assert "code" not in record


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (f"experiment://{UNKNOWN_ID}", f"experiment #{UNKNOWN_ID} does not exist"),
        ("experiment://abc", "experiment id 'abc' is not a number"),
        ("autoresearch://workspace/nope.py", "'nope.py' is not a file of this workspace"),
        ("autoresearch://workspace/../x", "Unknown resource"),  # never reaches the handler
    ],
)
async def test_resource_refusals_reach_the_client(
    lab: Lab, mode: str, uri: str, message: str
) -> None:
    async with connect(lab, mode) as client:
        with pytest.raises(MCPError, match=message.replace("#", r"\#")):
            await client.read_resource(uri)


async def test_research_loop_prompt(lab: Lab, mode: str) -> None:
    async with connect(lab, mode) as client:
        [listed] = (await client.list_prompts()).prompts
        assert listed.name == "research_loop"
        custom = await client.get_prompt(
            "research_loop",
            {"goal": "reach metric_value 1.5", "stopping_policy": "stop after 3 runs"},
        )
        default = await client.get_prompt("research_loop")
    text = custom.messages[0].content.text
    assert "Goal: reach metric_value 1.5\n" in text
    assert "Budget per experiment: 4 s (cpu clock) on cpu." in text
    assert "It waits up to\n   60 seconds" in text
    assert text.rstrip().endswith("stop after 3 runs")
    assert "Goal: lower val_bpb as far as the budget allows" in default.messages[0].content.text


async def test_tools_list(lab: Lab, mode: str) -> None:
    async with connect(lab, mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == READ_ONLY_TOOLS | CHANGING_TOOLS
    for name, tool in tools.items():
        assert tool.description and len(tool.description) < 200, name
        assert tool.output_schema is not None and tool.output_schema.get("type") == "object", name
        assert tool.annotations is not None, name
        assert tool.annotations.read_only_hint is (name in READ_ONLY_TOOLS), name
    assert tools["run_experiment"].input_schema["required"] == ["description"]
    assert "ExperimentResult" in json.dumps(tools["run_experiment"].output_schema)
    # server/wire.py: optional fields reach the client as type lists (cheaper to validate)
    row = tools["get_history"].output_schema["$defs"]["HistoryRow"]["properties"]
    assert row["metric_value"]["type"] == ["number", "null"], row["metric_value"]
    for name, tool in tools.items():
        schema = tool.output_schema
        for part in (schema, *schema.get("$defs", {}).values()):
            assert compact_nullables(part) == part, name


# ---------------------------------------------------------------- real training runs


async def wait_until_final(client: Client, experiment_id: int) -> dict[str, Any]:
    """wait_experiment until the run is final (each call is bounded; a loaded machine may need two)."""
    for _ in range(10):
        result = await call(client, "wait_experiment", experiment_id=experiment_id)
        if result["status"] in FINAL_STATUSES:
            return result
        assert result["status"] in ("queued", "running")
    raise AssertionError(f"experiment #{experiment_id} did not finish: {result}")


@pytest.mark.e2e
async def test_run_experiment_waits_for_the_verdict(training_lab: Lab, mode: str) -> None:
    lab = training_lab
    agent = f"waiter-{mode}"
    steps = "10**9 + 1" if mode == "auto" else "10**9 + 2"  # to the budget; a hash of its own
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async with connect(lab, mode, agent=agent) as client:
        await set_knob(client, lab, steps, "STEPS = ")
        response = await client.call_tool(
            "run_experiment",
            {"description": f"steps 500 -> {steps}: train to the budget"},
            progress_callback=on_progress,
        )
        assert not response.is_error, response.content
        result = response.structured_content
        assert result is not None
        assert result["status"] == "ok", result
        assert isinstance(result["metric_value"], float) and 0 < result["metric_value"] < 20
        assert result["verdict"] in ("improved", "within_noise", "worse")
        assert result["verdict_note"]
        assert result["next_step"]
        assert result["progress"] is None and result["log_tail"] is None
        assert any(message and f"#{result['id']} training" in message for _, _, message in progress)

        count = lab.store.count_experiments()
        again = await call(client, "run_experiment", description="the same code once more")
        assert (
            again["reused_from"] == result["id"] and again["metric_value"] == result["metric_value"]
        )
        assert lab.store.count_experiments() == count

        detail = await call(
            client,
            "get_experiment",
            experiment_id=result["id"],
            include_diff=True,
            include_log=True,
        )
        assert f"+STEPS = {steps}" in detail["diff_vs_baseline"]
        assert detail["log_tail"]
        assert detail["lineage"][0]["id"] == result["id"]
        assert detail["hardware"] == lab.hardware

        mine = await call(client, "get_history", scope="mine")
        assert [(r["id"], r["status"]) for r in mine["rows"]] == [(result["id"], "ok")]


@pytest.mark.e2e
async def test_client_disconnecting_mid_run_leaves_the_run_recorded(training_lab: Lab) -> None:
    lab = training_lab
    async with connect(lab, "auto", agent="leaver") as client:
        await set_knob(client, lab, "10**9 + 3", "STEPS = ")
        started = await call(
            client, "run_experiment", description="train to the budget, then leave", wait=False
        )
        experiment_id = started["id"]
        assert started["status"] in ("queued", "running")
        text = await refused(client, lab, "run_experiment", agent="leaver", description="another")
        assert text in {
            refusal(
                "run_experiment",
                f"experiment #{experiment_id} is still {status}; you may have 1 live at a time. "
                f"Call wait_experiment({experiment_id}) for its result, "
                f"or cancel_experiment({experiment_id})",
            )
            for status in ("queued", "running")
        }
    # The client is gone; the run goes on and is recorded.
    assert lab.experiment(experiment_id)["status"] in ("queued", "running")
    async with connect(lab, "legacy", agent="leaver") as client:
        final = await wait_until_final(client, experiment_id)
    assert final["status"] not in ("cancelled", "interrupted"), final
    assert final["verdict"] is not None
    assert lab.experiment(experiment_id)["finished_at"]

    async def nothing_live() -> None:
        while lab.scheduler.running():
            await anyio.sleep(0.1)

    with anyio.fail_after(60):
        await nothing_live()


async def test_results_that_grow_with_the_team_stay_compact(lab: Lab, mode: str) -> None:
    """With many agents, claims and queued runs, get_history, claim_idea and get_leaderboard
    list the newest claims, the head of the queue and the best agents (plus the caller's own
    row), each with its total: a result over 50,000 characters leaves the conversation in
    Claude Code (100 agents made get_history 41 kB and growing)."""
    from support import finished_run

    from server.models import LISTED_AGENTS, LISTED_CLAIMS, LISTED_QUEUE

    agents = [f"agent{n:02d}" for n in range(45)]
    for n, name in enumerate(agents):  # agent44, the caller, has the worst result
        finished_run(lab, name, f"idea {n}", metric_value=2.0 + n / 100)
        lab.claim(name, f"{name} tries idea {n} " + "with a long explanation " * 8)
    for n in range(50):
        finished_run(lab, agents[n % 10], f"queued {n}", status="queued", finished_at=None)
    caller = agents[-1]
    async with connect(lab, mode, agent=caller) as client:
        for tool, arguments in (
            ("get_history", {}),
            ("get_leaderboard", {}),
            ("claim_idea", {"text": "one more idea"}),
        ):
            result = await client.call_tool(tool, arguments)
            assert not result.is_error, result.content
            text = "".join(getattr(part, "text", "") for part in result.content)
            assert len(text) < 50_000, (tool, len(text))
        history = await call(client, "get_history")
        board = await call(client, "get_leaderboard")
        claimed = await call(client, "claim_idea", text="and another")
    open_claims = lab.store.open_claims()
    assert history["open_claims_total"] == 46 and claimed["open_claims_total"] == 47
    assert [c["id"] for c in history["open_claims"]] == [
        c["id"] for c in open_claims[1:][:LISTED_CLAIMS]
    ]
    assert [c["id"] for c in claimed["open_claims"]] == [
        c["id"] for c in open_claims[:LISTED_CLAIMS]
    ]
    assert claimed["claim"]["id"] == open_claims[0]["id"]
    assert history["queue_total"] == 50
    assert [e["position"] for e in history["queue"]] == list(range(1, LISTED_QUEUE + 1))
    everyone = lab.per_agent()
    assert board["agents_total"] == len(everyone) >= 45
    listed = [a["agent"] for a in board["per_agent"]]
    assert listed == [a["agent"] for a in everyone[:LISTED_AGENTS]] + [caller]
