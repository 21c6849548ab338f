"""Levels across devices and data (server.levels): the `--scale` options, the machine each level
gets, and the refusals a server start gives for a level it cannot run. The promotion from the
server's data to a level's own data, with real runs, is in tests/test_ladder.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from server.cli import main as cli_main
from server.lab import Lab, LabError, LabSettings, ScaleLevel
from server.settings import default_budget, default_budget_kind


def _lab(home: Path, data_dir: Path, *scales: str, **settings: object) -> Lab:
    if not (home / "data").exists():
        shutil.copytree(data_dir, home / "data")
    levels = (ScaleLevel("S", 1.0, 1), *(ScaleLevel.parse(text) for text in scales))
    values: dict = {"budget_seconds": 6.0, "start_scheduler": False, **settings}
    return Lab(LabSettings(home=home, scales=levels, **values))


def test_level_options_parse_with_colons_in_devices_and_paths() -> None:
    level = ScaleLevel.parse("L=2x1:device=cuda:1:data=/srv/a:b/data:budget=300:quota=1.5")
    assert (level.device, level.data, level.budget_seconds) == (
        "cuda:1",
        Path("/srv/a:b/data"),
        300.0,
    )
    assert level.device_hours_quota == 1.5 and level.own_machine
    assert not ScaleLevel.parse("M=5x1@cuda:1+cuda:2:quota=2").own_machine
    for bad, why in [
        ("L=1x1:device=tpu", "send cpu, cuda or cuda:N"),
        ("L=1x1:data=", "is empty or given twice"),
        ("L=1x1:device=cpu:device=cpu", "is empty or given twice"),
        ("L=1x1:budget=0", "budgets must be positive"),
        ("L=1x1:colour=red", "malformed"),
    ]:
        with pytest.raises(ValueError, match=why):
            ScaleLevel.parse(bad)
    # A GPU's clock is the wall clock, 300 s; the CPU's is CPU time, 60 s per thread.
    assert (default_budget_kind("cuda:0"), default_budget("cuda:0", "wall")) == ("wall", 300.0)
    assert (default_budget_kind("cpu"), default_budget("cpu", "cpu", 2)) == ("cpu", 120.0)


def test_a_level_on_a_gpu_this_machine_lacks_is_refused_at_start(
    tmp_path: Path, data_dir: Path
) -> None:
    import torch

    # the refusal names a device beyond the machine's
    missing = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda:0"
    with pytest.raises(LabError, match=f"names device {missing}, which this machine does not have"):
        _lab(tmp_path, data_dir, f"L=1x1:device={missing}")


def test_a_level_whose_data_is_missing_or_another_targets_is_refused(
    tmp_path: Path, data_dir: Path
) -> None:
    with pytest.raises(LabError, match=r"is not prepared .*autoresearch-mcp prepare --home"):
        _lab(tmp_path / "a", data_dir, f"L=1x1:data={tmp_path / 'nowhere'}")
    other = tmp_path / "other" / "data"
    other.mkdir(parents=True)
    (other / "manifest.json").write_text(json.dumps({"files": {}}))
    (other / ".target").write_text("digits\n")
    with pytest.raises(LabError, match="holds the data of the research target 'digits'"):
        _lab(tmp_path / "b", data_dir, f"L=1x1:data={other.parent}")


def test_a_level_with_its_own_data_and_budget_gets_its_own_machine(
    tmp_path: Path, data_dir: Path
) -> None:
    own = tmp_path / "own"
    shutil.copytree(data_dir, own / "data")
    manifest = json.loads((own / "data" / "manifest.json").read_text())
    # Another val set: its fingerprint changes (a copy of the same data would compare with S).
    (name,) = [n for n in manifest["files"] if n.startswith("val/")][:1]
    manifest["files"][name]["sha256"] = "0" * 64
    (own / "data" / "manifest.json").write_text(json.dumps(manifest))
    lab = _lab(tmp_path / "home", data_dir, f"L=2x1:data={own}:budget=10", "M=3x1")
    try:
        s, big, m = lab.machines.of("S"), lab.machines.of("L"), lab.machines.of("M")
        assert big.data_dir == (own / "data").resolve() and m is s
        assert big.hardware != s.hardware and big.budget_kind == s.budget_kind == "cpu"
        assert (lab.level_budget("S"), lab.level_budget("L"), lab.level_budget("M")) == (6, 20, 18)
        assert lab.machines.own_machines() == ["L"]
        (line,) = lab.machines.own_machine_lines()
        assert line.startswith("level L runs on cpu with the data in") and "20.0 s" in line
        assert lab.run_settings(1, scale="L").budget_seconds == 20
        plan = lab.plan_run("alice", "an idea at level L", scale="L")
        assert plan["hardware"] == big.hardware and plan["budget_seconds"] == 20
        # Only the local executor runs a level with its own data.
        with pytest.raises(LabError, match="levels L name their own device or data"):
            _lab(tmp_path / "home", data_dir, f"L=2x1:data={own}", executor="ray")
    finally:
        lab.close()


def test_serve_refuses_an_own_machine_on_the_first_level(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="the first --scale level runs on the server's own"):
        cli_main(["serve", "--home", str(tmp_path), "--scale", "S=1x1:device=cpu"])
