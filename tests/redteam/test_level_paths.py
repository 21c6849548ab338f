"""Red team, promotion levels on data of their own (server/levels.py): an agent reads where each
level runs through get_ladder, looking for the host path of a level's data folder (a way to
name the val files to a later hack). Defence: the folder is shown by its last two names only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mcp import Client

from server.app import build_server
from server.lab import Lab, LabSettings, ScaleLevel

from .mallory import call

pytestmark = pytest.mark.anyio


async def test_get_ladder_names_no_host_path_of_a_levels_data(tmp_path: Path, data_dir: Path):
    own = tmp_path / "secret-place" / "level-data"
    shutil.copytree(data_dir, own / "data")
    shutil.copytree(data_dir, tmp_path / "home" / "data")
    levels = (ScaleLevel("S", 1.0, 1), ScaleLevel.parse(f"L=2x1:data={own}"))
    lab = Lab(LabSettings(home=tmp_path / "home", scales=levels, start_scheduler=False))
    try:
        experiment_id, _ = lab.submit("mallory", "a change", files=dict(lab.baseline_files))
        async with Client(build_server(lab, default_agent="mallory")) as client:
            ladder = await call(client, "get_ladder", experiment_id=experiment_id)
    finally:
        lab.close()
    shown = {level["level"]: level for level in ladder["levels"]}
    assert shown["L"]["own_data"] and shown["L"]["data"] == "level-data/data"
    text = json.dumps(ladder)
    assert str(tmp_path) not in text and "secret-place" not in text
