"""`export --patches`: each confirmed improvement on the path to the best as its own patch.

The record is built through the Store API as the server writes it: a baseline run, a lineage
of confirmed improvements with an unconfirmed step in between, a better-looking dead branch, the
server's confirmation runs and sealed holdout scores. The patches must apply in order with
`git apply` to the baseline and rebuild the best code exactly; the index and the headers give
the gains; `--git` gives reproducible commits; agent text cannot escape the folder or the header.
"""

from __future__ import annotations

import subprocess
import zipfile
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from sandbox.workspace import hash_files
from server.cli import main
from server.lab import unified_diff
from server.patch_export import ExportRefused, export_patches, patches_zip
from server.record import SERVER_CONFIRMATION
from server.store import Store, utc_now

ROOT = Path(__file__).resolve().parent.parent
BASELINE = {"train.py": (ROOT / "trainer" / "train.py").read_text()}
SETTING = {"hardware": "cpu|test", "budget_seconds": 4.0, "budget_kind": "cpu", "scale": "S"}


def changed(code: dict[str, str], old: str, new: str) -> dict[str, str]:
    assert old in code["train.py"]
    return {"train.py": code["train.py"].replace(old, new, 1)}


def add(
    store: Store,
    kind: str,
    code: dict[str, str],
    *,
    description: str,
    agent: str = "alice",
    parent: int | None = None,
    verdict: str | None = None,
    metric_value: float = 3.0,
    confirms: int | None = None,
    parent_code: dict[str, str] | None = None,
) -> int:
    return store.create_experiment(
        agent=agent,
        kind=kind,
        status="ok",
        description=description,
        metric_value=metric_value,
        verdict=verdict,
        code=code,
        code_hash=hash_files({k: v.encode() for k, v in code.items()}),
        diff_parent=unified_diff(parent_code or BASELINE, code),
        diff_baseline=unified_diff(BASELINE, code),
        parent_id=parent,
        confirms_id=confirms,
        seed=1,
        flags=[],
        started_at=utc_now(),
        finished_at="2026-01-02T03:04:05.000Z",
        **SETTING,
    )


def confirm(
    store: Store, experiment_id: int, code: dict[str, str], values: list[float]
) -> list[int]:
    return [
        add(
            store,
            "confirmation",
            code,
            description=f"{SERVER_CONFIRMATION} #{experiment_id}",
            agent="alice",
            confirms=experiment_id,
            metric_value=v,
        )
        for v in values
    ]


@pytest.fixture
def record(tmp_path: Path) -> dict[str, Any]:
    store = Store(tmp_path / "history.sqlite")
    store.bind_target("small-gpt", "val_bpb", "minimize")  # as the GPT target's server binds it
    base_ids = [
        add(store, "baseline", BASELINE, description="baseline", verdict="baseline", metric_value=v)
        for v in (3.10, 3.12)
    ]
    store.set_baseline(
        values=[3.10, 3.12],
        experiment_ids=base_ids,
        mean=3.11,
        sd=0.014,
        **{k: SETTING[k] for k in ("hardware", "scale", "budget_kind", "budget_seconds")},
    )
    for run_id, holdout in zip(base_ids, (3.20, 3.22), strict=True):
        store.sealed.record(run_id, metric_exact=None, holdout_value=holdout)
    first_code = changed(BASELINE, "MATRIX_LR = 0.02", "MATRIX_LR = 0.03")
    first = add(
        store,
        "experiment",
        first_code,
        description="matrix lr 0.02 -> 0.03 | faster",
        verdict="improved",
        metric_value=3.05,
    )
    confirm(store, first, first_code, [3.06, 3.08])
    step_code = changed(first_code, "WARMDOWN_FRAC = 0.5", "WARMDOWN_FRAC = 0.6")
    step = add(
        store,
        "experiment",
        step_code,
        description="warmdown 0.6",
        agent="bob",
        parent=first,
        verdict="within_noise",
        parent_code=first_code,
    )
    best_code = changed(step_code, "HEAD_LR = 0.004", "HEAD_LR = 0.006")
    evil = "../../etc/passwd\n--- a/train.py\ndiff --git a/x b/x $(rm -rf ~)"
    best = add(
        store,
        "experiment",
        best_code,
        description=evil,
        agent="bob",
        parent=step,
        verdict="improved",
        metric_value=3.00,
        parent_code=step_code,
    )
    best_runs = confirm(store, best, best_code, [3.01, 3.03])
    store.sealed.record(best_runs[0], metric_exact=None, holdout_value=3.15)
    # A confirmed win on another branch, not as good: not on the path to the best.
    other = changed(BASELINE, "WEIGHT_DECAY = 0.0", "WEIGHT_DECAY = 0.1")
    other_id = add(
        store,
        "experiment",
        other,
        description="weight decay",
        verdict="improved",
        metric_value=3.07,
    )
    confirm(store, other_id, other, [3.09])
    return {
        "store": store,
        "first": first,
        "step": step,
        "best": best,
        "best_code": best_code,
        "other": other_id,
        "evil": evil,
    }


def git_apply_in_order(patches: list[Path], work: Path) -> str:
    work.mkdir()
    (work / "train.py").write_text(BASELINE["train.py"])
    for patch in patches:
        subprocess.run(["git", "apply", str(patch)], cwd=work, check=True, capture_output=True)
    return (work / "train.py").read_text()


def test_patches_apply_in_order_and_rebuild_the_best(
    record: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "export"
    written = export_patches(record["store"], out)
    patches = sorted(p for p in written if p.suffix == ".patch")
    assert [p.name for p in patches] == [  # agent text never names a file
        f"001-experiment-{record['first']}.patch",
        f"002-experiment-{record['best']}.patch",
    ]
    assert all(p.parent == out for p in written)
    assert git_apply_in_order(patches, tmp_path / "work") == record["best_code"]["train.py"]

    first = patches[0].read_text()
    assert "Subject: [PATCH 1/2] matrix lr 0.02 -> 0.03 | faster" in first
    assert "Gain vs the baseline: +0.0400 val_bpb" in first  # 3.11 - mean(3.06, 3.08)
    assert (
        "Confirmation runs: " in first
        and "3.0600" in first
        and "Sealed holdout: not scored" in first
    )
    second = patches[1].read_text()
    assert f"Gain vs #{record['first']}: +0.0500 val_bpb" in second  # 3.07 - 3.02
    assert "Gain vs the baseline: +0.0900 val_bpb" in second
    assert "Sealed holdout: 3.1500 (gain vs the baseline's holdout +0.0600)" in second
    assert f"Includes unconfirmed steps in between: #{record['step']}" in second
    assert "WARMDOWN_FRAC = 0.6" in second and "HEAD_LR = 0.006" in second  # the step is in it
    assert "\tkeep\t" not in second and " | keep | " in second  # its results.tsv line
    # The description is one header line: it cannot start a diff of its own.
    header = second.split("\n---\n", 1)[0]
    assert not any(line.startswith(("diff --git", "--- a/")) for line in header.splitlines())
    readme = (out / "README.md").read_text()
    assert f"[001-experiment-{record['first']}.patch]" in readme and "+0.0400" in readme
    assert "+0.0900" in readme and "3.1500" in readme and "weight decay" not in readme
    # Descriptions follow the table (one line each), where a | or a block cannot break it.
    table, descriptions = readme.split("Descriptions, as their agents wrote them:")
    assert "matrix lr" not in table
    assert f"- #{record['first']}: matrix lr 0.02 -> 0.03 | faster" in descriptions

    with pytest.raises(ExportRefused, match="not an empty folder"):
        export_patches(record["store"], out)
    archive = zipfile.ZipFile(BytesIO(patches_zip(record["store"])))
    assert sorted(archive.namelist()) == sorted(f"patches/{p.name}" for p in written)
    assert archive.read(f"patches/{patches[1].name}").decode() == second


def test_git_repository_is_reproducible(record: dict[str, Any], tmp_path: Path) -> None:
    heads = []
    for name in ("one", "two"):
        export_patches(record["store"], tmp_path / name, git=True)
        repo = tmp_path / name / "repo"
        log = subprocess.run(
            ["git", "log", "--format=%H %an %s", "improvements"],
            cwd=repo,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.splitlines()
        heads.append(log)
        branches = subprocess.run(
            ["git", "branch", "--format=%(refname:short)"],
            cwd=repo,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        assert (
            "baseline" in branches and sum(b.startswith("improvement/001-") for b in branches) == 1
        )
        assert (repo / "train.py").read_text() == record["best_code"]["train.py"]
    assert heads[0] == heads[1] and len(heads[0]) == 3  # baseline + two improvements
    assert heads[0][0].split(" ", 2)[1] == "bob" and heads[0][-1].endswith(
        "baseline: the research target as shipped"
    )


def test_cli_export_patches(
    record: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = Path(record["store"].path).parent
    assert main(["export", "--home", str(home), "--patches", str(tmp_path / "cli")]) == 0
    assert "wrote 2 patch(es)" in capsys.readouterr().out
    assert main(["export", "--home", str(home), "--patches", str(tmp_path / "cli")]) == 1
    assert "not an empty folder" in capsys.readouterr().err


def test_no_confirmed_improvement_gives_an_empty_index(tmp_path: Path) -> None:
    store = Store(tmp_path / "history.sqlite")
    add(store, "baseline", BASELINE, description="baseline", verdict="baseline")
    written = export_patches(store, tmp_path / "out")
    assert [p.name for p in written] == ["README.md"]
    assert "no confirmed improvement yet" in written[0].read_text()
