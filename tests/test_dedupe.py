"""No duplicate spending and the memory of what was tried: server/similarity.py's normaliser,
the dedupe in the submit path (server/dedupe.py, server/memory.py) and similar_experiments,
through the real MCP client over a real SQLite record. No run trains here: the labs' schedulers
never start, and finished experiments are recorded as the server would record them."""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.lab import Lab, unified_diff
from server.similarity import MAX_DEPTH, classify, describe_change, normalise_text
from server.store import utc_now
from server.untrusted import block
from tests.test_mcp_tools import call, connect, make_lab, refusal

pytestmark = pytest.mark.anyio
BENCH = Path(__file__).resolve().parent.parent / "bench" / "dedupe.py"

# ---------------------------------------------------------------- the normaliser


@pytest.fixture(scope="module")
def baseline() -> dict[str, str]:
    return {"train.py": (Path(__file__).parent.parent / "trainer" / "train.py").read_text()}


def edited(baseline: dict[str, str], *edits: tuple[str, str]) -> dict[str, str]:
    text = baseline["train.py"]
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    return {"train.py": text}


HEAD = "HEAD_LR = 0.004"
NORM = "return F.rms_norm(x, (x.size(-1),))"


def test_the_same_constant_reached_by_another_edit_is_a_duplicate(
    baseline: dict[str, str],
) -> None:
    a = describe_change(edited(baseline, (HEAD, "HEAD_LR = 0.008")), baseline)
    b = describe_change(edited(baseline, (HEAD, "HEAD_LR = 0.004 * 2  # doubled")), baseline)
    match = classify(a, b)
    assert match.kind == "duplicate"
    assert match.reason == "the same constant change: HEAD_LR 0.004 -> 0.008"
    powers = describe_change(edited(baseline, ("MLP_RATIO = 4", "MLP_RATIO = 2**3")), baseline)
    literal = describe_change(edited(baseline, ("MLP_RATIO = 4", "MLP_RATIO = 8")), baseline)
    assert classify(powers, literal).kind == "duplicate"


def test_renamed_locals_comments_and_docstrings_do_not_make_a_new_idea(
    baseline: dict[str, str],
) -> None:
    a = describe_change(edited(baseline, (NORM, NORM.replace("))", "), eps=1e-6)"))), baseline)
    b = describe_change(
        edited(
            baseline,
            ("def norm(x: torch.Tensor)", "def norm(t: torch.Tensor)"),
            ('"""RMSNorm without a learned scale."""', "# an eps, for stability"),
            (NORM, "return F.rms_norm(t, (t.size(-1),), eps=0.000001)"),
        ),
        baseline,
    )
    match = classify(a, b)
    assert (match.kind, match.reason) == (
        "duplicate",
        "the same code after normalising names, comments and formatting",
    )


def test_near_misses_are_not_duplicates(baseline: dict[str, str]) -> None:
    doubled = describe_change(edited(baseline, (HEAD, "HEAD_LR = 0.008")), baseline)
    tripled = describe_change(edited(baseline, (HEAD, "HEAD_LR = 0.012")), baseline)
    elsewhere = describe_change(
        edited(baseline, ("FINAL_LR_FRAC = 0.0", "FINAL_LR_FRAC = 0.008")), baseline
    )
    near = classify(doubled, tripled)
    assert (near.kind, near.reason) == ("near", "changes the same places differently: HEAD_LR")
    assert classify(doubled, elsewhere).kind == "different"
    flipped = describe_change(
        edited(baseline, ("x1 * cos - x2 * sin", "x1 * cos + x2 * sin")), baseline
    )
    assert classify(flipped, describe_change(baseline, baseline)).kind == "different"


def test_arguments_passed_by_keyword_keep_their_names(baseline: dict[str, str]) -> None:
    """Renaming an argument that a call passes by keyword changes what the code does."""
    by_keyword = "def f(x, y):\n    return x - y\n\nZ = f(x=1, y=2)\n"
    renamed = "def f(a, b):\n    return a - b\n\nZ = f(x=1, y=2)\n"  # a TypeError when run
    a = describe_change({"train.py": by_keyword}, baseline)
    b = describe_change({"train.py": renamed}, baseline)
    assert classify(a, b).kind != "duplicate"
    positional = describe_change({"train.py": renamed.replace("f(x=1, y=2)", "f(1, 2)")}, baseline)
    assert (
        classify(
            positional,
            describe_change({"train.py": by_keyword.replace("f(x=1, y=2)", "f(1, 2)")}, baseline),
        ).kind
        == "duplicate"
    )


def test_a_name_bound_only_in_a_nested_scope_is_not_renamed(baseline: dict[str, str]) -> None:
    """An outer function that reads a global, beside a nested one that binds the same name: the
    outer read is not a local, so two such changes on different globals are different code."""
    code = (
        "\ndef lr_scale():\n    def inner():\n        HEAD_LR = 1.0\n        return HEAD_LR\n"
        "    return HEAD_LR * inner() + sum(HEAD_LR for _ in range(1))\n"
    )
    ours = describe_change({"train.py": baseline["train.py"] + code}, baseline)
    other = describe_change(
        {"train.py": baseline["train.py"] + code.replace("HEAD_LR", "EMBED_LR")}, baseline
    )
    assert ours.fingerprint != other.fingerprint


def test_the_text_fallback_keeps_indentation() -> None:
    """Moving a statement out of a loop is another program, also when files are compared as text."""
    inside = "for i in range(3):\n    acc += 1\n    acc *= 2\n"
    outside = "for i in range(3):\n    acc += 1\nacc *= 2\n"
    assert normalise_text(inside) != normalise_text(outside)
    assert normalise_text("x  =  1   \n\n\ty = 2") == normalise_text("x = 1\n        y = 2")


def test_unparseable_and_pathological_files_fall_back_to_text(baseline: dict[str, str]) -> None:
    broken = {"train.py": "def f(:\n    return 1\n"}
    spaced = {"train.py": "def  f(:\n\n    return   1   \n"}
    a, b = describe_change(broken, baseline), describe_change(spaced, baseline)
    assert a.text_fallback and classify(a, b).kind == "duplicate"
    assert normalise_text("a   b\n\n  c ") == "a b\n  c"  # indentation is kept
    # Deeper than MAX_DEPTH, within what the parser accepts: compared as text, quickly.
    deep = {"train.py": "X = " + "[" * (MAX_DEPTH + 20) + "1" + "]" * (MAX_DEPTH + 20) + "\n"}
    started = time.perf_counter()
    change = describe_change(deep, baseline)
    assert change.text_fallback and time.perf_counter() - started < 5
    huge = {"train.py": "X = 2 ** 10 ** 9\nY = 10.0 ** 400\n"}
    assert describe_change(huge, baseline).fingerprint  # no hang, no overflow


# ---------------------------------------------------------------- through MCP


@pytest.fixture
def lab(tmp_path: Path, data_dir: Path) -> Iterator[Lab]:
    lab = make_lab(tmp_path / "home", data_dir, start_scheduler=False)
    yield lab
    lab.close()


def finish(lab: Lab, experiment_id: int, **fields: Any) -> None:
    """Record a run as finished, as the server would (nothing trains in these labs)."""
    lab.store.update_experiment(
        experiment_id, started_at=utc_now(), finished_at=utc_now(), **fields
    )


def recorded(lab: Lab, agent: str, description: str, files: dict[str, str], **fields: Any) -> int:
    """An experiment of `files` planned and recorded by the lab (fingerprint included), finished."""
    planned = lab.plan_run(agent, description, files=files)
    experiment_id = lab.store.create_experiment(**planned, requested_by=agent)
    finish(lab, experiment_id, **fields)
    return experiment_id


async def test_a_duplicate_by_another_edit_returns_the_earlier_result(lab: Lab) -> None:
    base = dict(lab.baseline_files)
    async with connect(lab, "auto", agent="alice") as alice, connect(lab, "auto", "bob") as bob:
        await call(alice, "edit_file", path="train.py", old=HEAD, new="HEAD_LR = 0.008")
        first = await call(alice, "run_experiment", description="head lr x2", wait=False)
        finish(lab, first["id"], status="ok", metric_value=2.5, verdict="worse")
        text = base["train.py"].replace(HEAD, "HEAD_LR = 0.004 * 2  # bob's idea", 1)
        await call(bob, "write_file", path="train.py", content=text)
        count = lab.store.count_experiments()
        again = await call(bob, "run_experiment", description="double the head lr", wait=False)
        assert lab.store.count_experiments() == count  # nothing queued
        assert (again["id"], again["reused_from"], again["metric_value"]) == (first["id"],) * 2 + (
            2.5,
        )
        # Why it matched quotes alice's code: her words, in her block, for bob.
        reason = block("the same constant change: HEAD_LR 0.004 -> 0.008", "alice")
        assert again["next_step"].startswith(
            f"nothing new was queued: the same code ({reason}) already ran as #{first['id']} "
            "by alice with the same settings: its result is shown"
        )
        assert "force_reason" in again["next_step"]
        (request,) = lab.store.requests.search(agent="bob")
        assert request["description"] == "double the head lr"
        assert request["match"] == "normalised" and request["earlier_id"] == first["id"]

        # Saying why it differs runs it, and the reason is on the row.
        forced = await call(
            bob,
            "run_experiment",
            description="double the head lr, again",
            wait=False,
            force_reason="the first run shared a contended machine",
        )
        assert forced["reused_from"] is None and forced["status"] == "queued"
        assert lab.store.count_experiments() == count + 1
        row = lab.experiment(forced["id"])
        assert row["force_reason"] == "the first run shared a contended machine"
        assert row["agent"] == "bob"
        empty = await bob.call_tool(
            "run_experiment", {"description": "x", "wait": False, "force_reason": "   "}
        )
        assert empty.is_error and "force_reason is empty" in empty.content[0].text  # type: ignore[union-attr]
        assert lab.store.count_experiments() == count + 1


async def test_a_near_duplicate_is_only_a_note(lab: Lab) -> None:
    base = lab.baseline_files["train.py"]
    earlier = recorded(
        lab,
        "alice",
        "head lr x2",
        {"train.py": base.replace(HEAD, "HEAD_LR = 0.008", 1)},
        status="ok",
        metric_value=2.5,
        verdict="worse",
    )
    async with connect(lab, "auto", agent="bob") as bob:
        await call(bob, "edit_file", path="train.py", old=HEAD, new="HEAD_LR = 0.012")
        result = await call(bob, "run_experiment", description="head lr x3", wait=False)
    assert result["reused_from"] is None and result["status"] == "queued"
    # The note quotes both changes (alice's and bob's): a block labelled with both, for bob.
    reason = block("changes the same places differently: HEAD_LR", "alice,bob")
    assert result["notes"] == [
        f"near #{earlier} by alice: {reason}; get_experiment({earlier}) shows what happened"
    ]


async def test_the_unchanged_workspace_is_told_the_baseline_is_queued(lab: Lab) -> None:
    (baseline_id,) = lab.ensure_baseline(1)
    async with connect(lab, "auto", agent="alice") as alice:
        result = await call(
            alice, "run_experiment", description="first look at the baseline", wait=False
        )
    assert (result["id"], result["reused_from"], result["status"]) == (
        baseline_id,
        baseline_id,
        "queued",
    )
    assert result["next_step"].startswith(
        f"nothing new was queued: the same code (byte for byte) is already queued "
        f"as #{baseline_id} by server with the same settings: wait_experiment({baseline_id}) "
        "for its result; your request is on record"
    )
    assert "already ran" not in result["next_step"]
    (request,) = lab.store.requests.search(agent="alice")
    assert (request["description"], request["earlier_id"], request["match"]) == (
        "first look at the baseline",
        baseline_id,
        "exact",
    )
    async with connect(lab, "auto", agent="bob") as bob:
        found = await call(bob, "similar_experiments", description="look at the baseline")
        everyone = await call(bob, "get_history", query="first look")
        nobody = await call(bob, "get_history", scope="mine")
    assert [r["id"] for r in found["requests"]] == [request["id"]]
    assert found["requests"][0]["agent"] == "alice"
    # alice's words reach bob as data, in a labelled block
    assert [r["description"] for r in everyone["requests"]] == [
        block("first look at the baseline", "alice")
    ]
    assert nobody["requests"] == []
    async with connect(lab, "auto", agent="alice") as alice:
        mine = await call(alice, "get_history", scope="mine")
    assert [(r["earlier_id"], r["match"]) for r in mine["requests"]] == [(baseline_id, "exact")]


async def test_similar_experiments_finds_failed_and_worse_runs(lab: Lab) -> None:
    base = lab.baseline_files["train.py"]
    cosine = "decay = 0.5 * (1 + math.cos(math.pi * (1 - (1 - progress) / WARMDOWN_FRAC)))"
    linear = "decay = (1 - progress) / WARMDOWN_FRAC"
    crashed = recorded(
        lab,
        "alice",
        "cosine warmdown instead of linear",
        {"train.py": base.replace(linear, cosine, 1)},
        status="crash",
        verdict="failed",
        failure_reason="train.py raised NameError: name 'maths' is not defined\nTraceback...",
    )
    worse = recorded(
        lab,
        "carol",
        "gelu in the MLP",
        {"train.py": base.replace("F.relu(self.up(x)).square()", "F.gelu(self.up(x))", 1)},
        status="ok",
        metric_value=2.61,
        verdict="worse",
    )
    unrelated = recorded(
        lab,
        "carol",
        "head lr x2",
        {"train.py": base.replace(HEAD, "HEAD_LR = 0.008", 1)},
        status="ok",
        metric_value=2.4,
        verdict="within_noise",
    )
    # The same cosine schedule, the local renamed: a diff vs the baseline.
    renamed = base.replace(linear, cosine.replace("decay =", "frac ="), 1).replace(
        "max(decay, 0.0)", "max(frac, 0.0)", 1
    )
    diff = unified_diff(lab.baseline_files, {"train.py": renamed})
    async with connect(lab, "auto", agent="bob") as bob:
        by_diff = await call(bob, "similar_experiments", diff=diff)
        (hit,) = [h for h in by_diff["experiments"] if h["id"] == crashed]
        assert (hit["similarity"], hit["agent"], hit["status"], hit["verdict"]) == (
            "duplicate",
            "alice",
            "crash",
            "failed",
        )
        # alice's failure (her code's words) reaches bob as data
        assert hit["failure_reason"] == block(
            "train.py raised NameError: name 'maths' is not defined", "alice"
        )
        assert unrelated not in [h["id"] for h in by_diff["experiments"]]
        assert by_diff["compared"] == "the diff (applied to the baseline)"

        # Bob's workspace holds another activation in the MLP: near carol's worse run.
        await call(
            bob,
            "edit_file",
            path="train.py",
            old="F.relu(self.up(x)).square()",
            new="F.silu(self.up(x))",
        )
        by_workspace = await call(bob, "similar_experiments")
        assert by_workspace["compared"] == "your workspace"
        assert [(h["id"], h["similarity"], h["verdict"]) for h in by_workspace["experiments"]] == [
            (worse, "near", "worse")
        ]

        by_words = await call(bob, "similar_experiments", description="a cosine warmdown")
        assert [h["id"] for h in by_words["experiments"]][:1] == [crashed]
        assert by_words["experiments"][0]["similarity"] == "description"
        assert "not as instructions" in by_words["notice"]

        bad = await bob.call_tool("similar_experiments", {"diff": "--- a/x\n+++ b/x\n@@ nonsense"})
        assert bad.is_error
        assert "applies neither to the baseline nor to your workspace parent" in (
            bad.content[0].text  # type: ignore[union-attr]
        )
        assert refusal("similar_experiments", "") in bad.content[0].text  # type: ignore[union-attr]


def test_the_dedupe_bench_keeps_duplicate_precision_at_95_percent() -> None:
    """bench/dedupe.py on its labelled pairs: a duplicate blocks a run, so its precision is
    what keeps real ideas from being blocked (issue 20: >= 95%)."""
    spec = importlib.util.spec_from_file_location("dedupe_bench", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    baseline = bench.TRAIN.read_text()
    pairs = json.loads(bench.PAIRS.read_text()) + bench.constant_pairs(baseline)
    assert len(pairs) >= 50
    assert {p["label"] for p in pairs} == {"duplicate", "near", "different"}
    result = bench.evaluate(pairs, baseline)
    precision, recall = result["scores"]["duplicate"]
    assert precision is not None and precision >= 0.95
    assert recall is not None and recall >= 0.8
    assert "| duplicate |" in bench.report(result)


def test_a_store_from_before_fingerprints_gets_the_columns(tmp_path: Path) -> None:
    """Old SQLite files open with the new columns (NULL in old rows) and their index."""
    import sqlite3

    from server.store import Store

    path = tmp_path / "history.sqlite"
    Store(path).create_experiment(agent="old", kind="experiment", description="before")
    with sqlite3.connect(path) as db:
        db.execute("DROP INDEX idx_experiments_change_fingerprint")
        for column in ("change_fingerprint", "change_edits", "force_reason"):
            db.execute(f"ALTER TABLE experiments DROP COLUMN {column}")
    store = Store(path)
    assert {"change_fingerprint", "change_edits", "force_reason"} <= set(
        store.db.table("experiments").columns_dict
    )
    assert "idx_experiments_change_fingerprint" in {
        index.name for index in store.db.table("experiments").indexes
    }
    assert store.get_experiment(1)["description"] == "before"
    assert store.similar.recent_changes(10) == []  # an old row has no recorded change


def test_the_servers_own_reruns_never_answer_an_agents_request(tmp_path: Path) -> None:
    """A drift check re-runs the best's code with its seed, and confirmation and ablation runs
    are parts of another request: none of them is an answer to an agent's new experiment (an
    agent's run answered by an in-flight drift check got a row with no verdict; a red-team test
    saw it). The agent's own earlier experiment of the same code is."""
    from server.store import Store

    store = Store(tmp_path / "history.sqlite")
    settings = {"hardware": "h", "budget_seconds": 6.0, "budget_kind": "cpu", "scale": "S"}
    row = {**settings, "change_fingerprint": "f" * 32, "code_hash": "c" * 64, "status": "running"}
    for kind in ("drift_check", "confirmation", "ablation"):
        store.create_experiment(agent="server", kind=kind, description=kind, **row)
    assert store.similar.find_by_fingerprint("f" * 32, settings) is None
    assert store.find_by_code("c" * 64, settings) is None
    earlier = store.create_experiment(agent="alice", kind="experiment", description="x", **row)
    found = store.similar.find_by_fingerprint("f" * 32, settings)
    assert found is not None and found["id"] == earlier
    assert store.find_by_code("c" * 64, settings)["id"] == earlier


async def test_another_agents_open_claim_on_the_same_idea_is_noted(lab: Lab) -> None:
    async with connect(lab, "auto", agent="bob") as bob, connect(lab, "auto", "alice") as alice:
        claim = await call(bob, "claim_idea", text="cosine warmdown instead of linear")
        await call(alice, "edit_file", path="train.py", old=HEAD, new="HEAD_LR = 0.005")
        result = await call(
            alice, "run_experiment", description="a cosine warmdown instead of linear", wait=False
        )
        assert result["status"] == "queued"  # a note, never a refusal
        (note,) = result["notes"]
        assert note.startswith(f"bob has claimed a similar idea (claim {claim['claim']['id']}")
        await call(
            bob, "edit_file", path="train.py", old="FINAL_LR_FRAC = 0.0", new="FINAL_LR_FRAC = 0.1"
        )
        own = await call(bob, "run_experiment", description="cosine warmdown", wait=False)
        assert own["notes"] == []  # his run released his own claim: nothing to note
