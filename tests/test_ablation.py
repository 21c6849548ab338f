"""`ablate` and `get_ablation` through the MCP client: a two-part change re-run with one part
left out at a time on paired fresh seeds (real short training runs, of the template target:
ablation is the server's part, the same for every target), the analysis once the runs are done, ablation runs kept out of the leaderboard, the noise and the verdicts, and the
refusals (too few or too many parts, a failed experiment, a quota that cannot take the runs)."""

from __future__ import annotations

import re
import statistics
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from support import finished_run, lab_on_copy, template_lab, wait_until_finished

from server.ablation import MAX_PARTS, analyse, apply_hunks, parse_hunks
from server.app import build_server
from server.lab import Lab, unified_diff
from server.ladder import three_way_merge
from server.untrusted import block
from server.verdicts import published

# CPU seconds (the machine is shared), no baseline runs; the verdicts must come from the
# ablation, not from the machine's load.
SETTINGS: dict[str, Any] = {
    "budget_seconds": 4,
    "budget_kind": "cpu",
    "baseline_repeats": 0,
    "eval_windows": 2,
    "call_wait_seconds": 60,
    "contended_share": 0.0,
    "contended_share_cpu_budget": 0.0,
    "confirm_runs": 2,  # a candidate's own confirmation is tests/test_verdicts.py's subject
}


@pytest.fixture
def lab(tmp_path: Path, data_dir: Path) -> Iterator[Lab]:
    """A lab whose scheduler never starts: runs stay queued and nothing trains."""
    lab = lab_on_copy(tmp_path / "home", data_dir, **SETTINGS, start_scheduler=False)
    yield lab
    lab.close()


@pytest.fixture(scope="module")
def training_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    # The template target: the (parts + 2) x 2 runs and 2 baselines take about a second each
    # (on the GPT they took 65 s of CI). Two slots: they go two at a time.
    lab = template_lab(tmp_path_factory.mktemp("ablation") / "home", **SETTINGS, cpu_slots=2)
    yield lab
    lab.close()


@asynccontextmanager
async def connect(lab: Lab, agent: str = "alice") -> AsyncIterator[Client]:
    async with Client(build_server(lab, default_agent=agent)) as client:
        yield client


async def call(client: Client, tool: str, /, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def refused(client: Client, lab: Lab, tool: str, /, **arguments: Any) -> str:
    """A call that must refuse, recording nothing; the text the model reads."""
    before = (
        lab.store.count_experiments(),
        lab.store.db.execute("SELECT COUNT(*) FROM ablations").fetchone(),
    )
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    after = (
        lab.store.count_experiments(),
        lab.store.db.execute("SELECT COUNT(*) FROM ablations").fetchone(),
    )
    assert after == before
    [content] = result.content
    return str(content.text)


def edited(lab: Lab, *changes: tuple[str, str]) -> dict[str, str]:
    """The baseline train.py with each (old line start, new line) replaced: one hunk each when far apart."""
    lines = lab.baseline_files["train.py"].splitlines(keepends=True)
    for prefix, new in changes:
        (index,) = [i for i, line in enumerate(lines) if line.startswith(prefix)]
        lines[index] = new + "\n"
    return {"train.py": "".join(lines)}


def record(
    lab: Lab,
    description: str,
    files: dict[str, str],
    *,
    parent_id: int | None = None,
    status: str = "ok",
    agent: str = "alice",
) -> int:
    """A finished experiment written into the store as the server records one."""
    parent = lab.experiment(parent_id)["code"] if parent_id else lab.baseline_files
    return finished_run(
        lab,
        agent,
        description,
        files=files,
        parent_files=parent,
        status=status,
        metric_value=3.0 if status == "ok" else None,
        verdict="within_noise" if status == "ok" else "failed",
        parent_id=parent_id,
    )


TWO_PARTS = (("MATRIX_LR = ", "MATRIX_LR = 0.03"), ("LOG_EVERY = ", "LOG_EVERY = 10"))
# Derived figures are published at 5 decimals (server.verdicts.PUBLISHED_DIGITS): the template's
# metrics have 5 themselves, so a mean of two differences can sit half a last digit away.
HALF_A_PUBLISHED_DIGIT = 0.5e-5 + 1e-9
# The same shape in the template's train.py: a constant and, 40 lines down, the logging.
TEMPLATE_TWO_PARTS = (
    ("LEARNING_RATE = ", "LEARNING_RATE = 0.03"),
    ("    if step % 100 == 0:", "    if step % 50 == 0:"),
)


# ---------------------------------------------------------------- the real thing


@pytest.mark.anyio
@pytest.mark.e2e
@pytest.mark.slow
async def test_a_two_part_change_is_ablated_on_paired_seeds(training_lab: Lab) -> None:
    lab = training_lab
    baselines = lab.ensure_baseline(2)  # the server's noise: what additivity is judged against
    experiment_id = record(lab, "lr 0.03 and log every 50", edited(lab, *TEMPLATE_TWO_PARTS))
    async with connect(lab) as client:
        started = await call(client, "ablate", experiment_id=experiment_id)
        assert started["experiment_id"] == experiment_id and started["part_kind"] == "hunks"
        assert [p["index"] for p in started["parts"]] == [1, 2]
        assert "LEARNING_RATE = 0.05" in started["parts"][0]["label"]
        assert "step % 50" in started["parts"][1]["label"]
        runs = started["runs"]
        assert len(runs) == 2 * (2 + 2)  # (full, base, two leave-one-outs) x 2 seeds
        assert started["analysis"] is None and started["status"] == "running"
        rows = [lab.experiment(r["run_id"]) for r in runs]
        assert {row["kind"] for row in rows} == {"ablation"}
        assert {row["requested_by"] for row in rows} == {"alice"}
        # Paired: every variant runs on the same two fresh seeds (never the screening seed).
        seeds = {r["seed_index"]: set() for r in runs}
        for run, row in zip(runs, rows, strict=True):
            seeds[run["seed_index"]].add(row["seed"])
        assert all(len(s) == 1 for s in seeds.values())
        assert len({next(iter(s)) for s in seeds.values()}) == 2
        assert lab.settings.seed not in {row["seed"] for row in rows}
        by_role = {(r["role"], r["seed_index"]): row for r, row in zip(runs, rows, strict=True)}
        assert by_role[("full", 0)]["code"] == lab.experiment(experiment_id)["code"]
        assert by_role[("base", 0)]["code"] == lab.baseline_files
        without_1 = by_role[("without part 1", 0)]["code"]["train.py"]
        assert "LEARNING_RATE = 0.03" not in without_1 and "step % 50 == 0:\n" in without_1
        # Asked again (by anyone): the same ablation, nothing more queued.
        count = lab.store.count_experiments()
        again = await call(client, "ablate", experiment_id=experiment_id)
        assert again["ablation_id"] == started["ablation_id"]
        assert lab.store.count_experiments() == count

        finished = wait_until_finished(lab, [r["run_id"] for r in runs] + baselines, timeout=900)
        failed = [(r["id"], r["kind"], r["status"], r["failure_reason"]) for r in finished]
        assert all(row["status"] == "ok" for row in finished), [f for f in failed if f[2] != "ok"]
        done = await call(client, "get_ablation", experiment_id=experiment_id)
        assert done == await call(client, "get_ablation", ablation_id=started["ablation_id"])
    assert done["status"] == "done"
    analysis = done["analysis"]
    value = {
        (r["role"], r["seed_index"]): lab.experiment(r["run_id"])["metric_value"] for r in runs
    }
    total = statistics.fmean(value[("base", n)] - value[("full", n)] for n in (0, 1))
    assert analysis["total_gain"] == pytest.approx(total, abs=HALF_A_PUBLISHED_DIGIT)
    for part in (1, 2):
        contribution = statistics.fmean(
            value[(f"without part {part}", n)] - value[("full", n)] for n in (0, 1)
        )
        assert analysis["parts"][part - 1]["mean"] == pytest.approx(
            contribution, abs=HALF_A_PUBLISHED_DIGIT
        )
        assert analysis["parts"][part - 1]["n"] == 2
        assert analysis["parts"][part - 1]["effect"] in ("helps", "hurts", "within noise")
    assert analysis["additivity"] in ("adds up", "sub-additive", "interacting")
    assert analysis["noise_sd"] == published(lab.noise().sd)
    assert analysis["additivity"] in analysis["summary"] and "tolerance" in analysis["summary"]
    # Kept out of everything that ranks or judges: no verdict, not on the leaderboard, not noise.
    assert all(row["verdict"] is None for row in finished[: len(runs)])
    assert lab.store.count_experiments(kind="ablation") == len(runs)
    ranked = {entry["id"] for entry in lab.leaderboard(limit=50)}
    assert not ranked & {r["run_id"] for r in runs}
    assert lab.noise().runs == 2  # the two baseline runs only
    assert lab.store.finished_experiment_count() == 1  # the ablated experiment itself


# ---------------------------------------------------------------- parts and refusals


@pytest.mark.anyio
async def test_refusals_record_nothing(lab: Lab) -> None:
    one = record(lab, "one change", edited(lab, TWO_PARTS[0]))
    failed = record(lab, "crashed", edited(lab, *TWO_PARTS), status="crash")
    lines = lab.baseline_files["train.py"].splitlines(keepends=True)
    for index in range(100, 100 + 20 * (MAX_PARTS + 1), 20):  # far apart: one hunk each
        lines[index] = lines[index].rstrip("\n") + "  # a comment\n"
    too_many = record(lab, "seven changes", {"train.py": "".join(lines)})
    assert len(parse_hunks(lab.experiment(too_many)["diff_parent"])) > MAX_PARTS
    two = record(lab, "two changes", edited(lab, *TWO_PARTS), agent="bob")
    lab.store.set_quota("carol", max_experiments=3)
    async with connect(lab) as client:
        text = await refused(client, lab, "ablate", experiment_id=one)
        assert "has 1 part(s)" in text and "at least 2" in text
        text = await refused(client, lab, "ablate", experiment_id=failed)
        assert "status crash; only a successful experiment can be ablated" in text
        text = await refused(client, lab, "ablate", experiment_id=too_many)
        assert f"at most {MAX_PARTS}" in text
        text = await refused(client, lab, "ablate", experiment_id=999_999)
        assert "does not exist" in text
        text = await refused(client, lab, "ablate", experiment_id=0)
        assert "experiment_id" in text
        text = await refused(client, lab, "get_ablation")
        assert "send either ablation_id or experiment_id" in text
        text = await refused(client, lab, "get_ablation", ablation_id=1, experiment_id=two)
        assert "send either ablation_id or experiment_id" in text
        text = await refused(client, lab, "get_ablation", experiment_id=two)
        assert f"ablate(experiment_id={two})" in text
        text = await refused(client, lab, "get_ablation", ablation_id=77)
        assert "ablation 77 does not exist" in text
    async with connect(lab, "carol") as client:
        text = await refused(client, lab, "ablate", experiment_id=two)
        assert "may run 3 experiments in all" in text and "would queue 8 runs" in text
    async with connect(lab, "alice") as client:  # anyone may ablate anyone's; charged to the asker
        started = await call(client, "ablate", experiment_id=two)
    assert {lab.experiment(r["run_id"])["requested_by"] for r in started["runs"]} == {"alice"}
    assert lab.charged_runs("alice") == 8 and lab.charged_runs("bob") == 0
    async with connect(lab, "bob") as client:  # asking again: the same ablation, nothing queued
        again = await call(client, "ablate", experiment_id=two)
    assert again["ablation_id"] == started["ablation_id"]
    # Alice cancels every run of it: nobody can hold an experiment's ablation that way.
    for run in started["runs"]:
        lab.cancel("alice", run["run_id"])
    async with connect(lab, "bob") as client:
        fresh = await call(client, "ablate", experiment_id=two)
    assert fresh["ablation_id"] != started["ablation_id"]
    assert {lab.experiment(r["run_id"])["status"] for r in fresh["runs"]} == {"queued"}


@pytest.mark.anyio
async def test_a_combine_is_ablated_by_the_ideas_it_merged(lab: Lab) -> None:
    a = record(lab, "matrix lr", edited(lab, TWO_PARTS[0]))
    b = record(lab, "log every", edited(lab, TWO_PARTS[1]), agent="bob")
    merged = three_way_merge(
        edited(lab, TWO_PARTS[0])["train.py"],
        lab.baseline_files["train.py"],
        edited(lab, TWO_PARTS[1])["train.py"],
    )[0]
    combined = record(lab, f"combine #{a} + #{b}", {"train.py": merged})
    # A description that names ideas whose merge is not its code: the hunks are the parts.
    faked = record(
        lab, f"combine #{a} + #{b}", edited(lab, TWO_PARTS[0], ("DEPTH = ", "DEPTH = 3"))
    )
    async with connect(lab) as client:
        ideas = await call(client, "ablate", experiment_id=combined)
    async with connect(lab, "bob") as client:  # alice has her live runs: one request at a time
        hunks = await call(client, "ablate", experiment_id=faked)
    assert ideas["part_kind"] == "combined experiments"
    # bob's idea is quoted to alice as data (his words, his block)
    assert [p["label"] for p in ideas["parts"]] == [
        f"#{a} matrix lr",
        block(f"#{b} log every", "bob"),
    ]
    without_a = lab.experiment(
        next(r["run_id"] for r in ideas["runs"] if r["role"] == "without part 1")
    )
    assert without_a["code"] == edited(lab, TWO_PARTS[1])
    assert hunks["part_kind"] == "hunks" and len(hunks["parts"]) == 2


@pytest.mark.anyio
async def test_part_labels_are_the_codes_authors_words(lab: Lab) -> None:
    """A part's label quotes the experiment's code: labelled with its authors, not with the row's
    agent; the base variant runs the parent's code (mallory's) and records her as its author."""
    hers = finished_run(
        lab, "mallory", "her base", metric_value=3.0, verdict="within_noise",
        code_authors=["mallory"],
    )  # fmt: skip
    parent_code = lab.experiment(hers)["code"]
    files = {"train.py": edited(lab, *TWO_PARTS)["train.py"] + "# her base\n"}
    two = finished_run(
        lab, "bob", "two changes", files=files, parent_files=parent_code, parent_id=hers,
        metric_value=3.0, verdict="within_noise", code_authors=["bob"],
    )  # fmt: skip
    async with connect(lab, "carol") as client:
        started = await call(client, "ablate", experiment_id=two)
    assert started["part_kind"] == "hunks"
    for part in started["parts"]:
        assert re.match(r'<untrusted-agent-content-[0-9a-f]{8} author="bob">', part["label"])
    # The base variant runs mallory's code (the parent's): its authors say so.
    base_runs = [r["run_id"] for r in started["runs"] if r["role"] == "base"]
    assert base_runs and all(
        lab.store.code_authors_of(run) == ["bob", "mallory"] for run in base_runs
    )


def test_hunks_rebuild_the_code_and_leave_one_out() -> None:
    old = {"f.py": "".join(f"line {i}\n" for i in range(40))}
    new = {"f.py": old["f.py"].replace("line 3\n", "line three\n").replace("line 30\n", "")}
    hunks = parse_hunks(unified_diff(old, new))
    assert len(hunks) == 2
    assert apply_hunks(old, hunks) == new
    assert apply_hunks(old, hunks[1:]) == {"f.py": old["f.py"].replace("line 30\n", "")}
    assert apply_hunks(new, hunks) is None  # hunks that no longer match are reported, not forced
    # A removed line that looks like a file header is still a removed line.
    tricky_old = {"f.py": "a\n-- a/x\nb\n"}
    tricky_new = {"f.py": "a\nb\n"}
    assert apply_hunks(tricky_old, parse_hunks(unified_diff(tricky_old, tricky_new))) == tricky_new


def test_additivity_is_judged_against_the_noise() -> None:
    def runs(full: float, base: float, without: list[float]) -> list[dict[str, Any]]:
        out = []
        for seed in (0, 1):
            out.append(
                {
                    "role": "full",
                    "part": None,
                    "seed_index": seed,
                    "status": "ok",
                    "metric_value": full,
                }
            )
            out.append(
                {
                    "role": "base",
                    "part": None,
                    "seed_index": seed,
                    "status": "ok",
                    "metric_value": base,
                }
            )
            for i, value in enumerate(without):
                out.append(
                    {
                        "role": f"without part {i + 1}",
                        "part": i,
                        "seed_index": seed,
                        "status": "ok",
                        "metric_value": value,
                    }
                )
        return out

    adds_up = analyse(runs(3.0, 3.1, [3.06, 3.04]), 2, 0.005, 2.0)
    assert adds_up["additivity"] == "adds up" and adds_up["total_gain"] == pytest.approx(0.1)
    assert [p["effect"] for p in adds_up["parts"]] == ["helps", "helps"]
    # Each part alone does the job: removing either loses nothing, together they gain 0.1.
    overlap = analyse(runs(3.0, 3.1, [3.0, 3.0]), 2, 0.005, 2.0)
    assert overlap["additivity"] == "sub-additive"
    assert [p["effect"] for p in overlap["parts"]] == ["within noise", "within noise"]
    # Each part needs the other: removing either loses the whole gain.
    synergy = analyse(runs(3.0, 3.1, [3.1, 3.1]), 2, 0.005, 2.0)
    assert synergy["additivity"] == "interacting"
    unmeasured = analyse(runs(3.0, 3.1, [3.06, 3.04]), 2, None, 2.0)
    assert unmeasured["additivity"] == "unknown" and "not measured" in unmeasured["summary"]
    crashed = runs(3.0, 3.1, [3.06, 3.04])
    for run in crashed:
        if run["part"] == 1:
            run.update(status="crash", metric_value=None)
    partial = analyse(crashed, 2, 0.005, 2.0)
    assert partial["additivity"] == "unknown" and "2 run(s) failed" in partial["summary"]
