"""bench/campaign.py on a tiny campaign through the real Lab: every figure of its table is
computed from the record, so the bench cannot rot while the verdict rule changes under it."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from server.settings import LabSettings

BENCH = Path(__file__).resolve().parent.parent / "bench" / "campaign.py"


@pytest.fixture(scope="module")
def campaign() -> ModuleType:
    spec = importlib.util.spec_from_file_location("campaign_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_tiny_campaign_fills_every_figure_of_the_table(
    campaign: ModuleType, data_dir: Path
) -> None:
    """Two campaigns of 12 experiments, half of them a true gain of 10 sd (any sound rule confirms
    that), through a real Lab with the simulated executor: the table's figures are computed and
    agree with what the Lab recorded."""
    config = campaign.CampaignConfig(
        experiments=12,
        true_share=0.5,
        sd=0.02,
        base_mean=1.86,
        agent_confirms=0 if campaign.rule_has_candidates() else 2,
        gains_sd=(10.0,),
    )
    from server import recording

    review = getattr(recording, "review_seed_code", None)
    results = [campaign.simulate_campaign(config, data_dir, seed) for seed in (1, 2)]
    assert getattr(recording, "review_seed_code", None) is review, "the real review is put back"
    for result in results:
        assert len(result["outcomes"]) == 12
        assert result["runs"]["experiment"] == 12
        assert result["runs"]["baseline"] == LabSettings().baseline_repeats
        assert math.isfinite(result["lab_sd"]) and result["lab_sd"] > 0
        confirmation_runs = sum(o["confirmation_runs"] for o in result["outcomes"])
        assert result["runs"]["confirmation"] == confirmation_runs
    summary = campaign.summarise(config, results)
    assert summary["null_experiments"] == 12
    assert summary["experiments"] == 24
    for key in (
        "false_improved_per_100_nulls",
        "false_candidates_per_100_nulls",
        "survived_false_per_campaign",
        "extra_runs_per_candidate",
        "runs_per_experiment",
    ):
        assert math.isfinite(summary[key]) and summary[key] >= 0, key
    low, high = summary["survived_false_interval"]
    assert 0 <= low <= summary["survived_false_per_campaign"] <= high
    power = summary["power"]["10"]
    assert power["experiments"] == 12
    assert power["confirmed"] == 1.0, "a 10 sd gain must survive confirmation"
    assert summary["experiments_confirmed"] >= 12  # every true gain had confirmation runs
    assert summary["extra_runs_per_candidate"] >= 1
    total_runs = sum(summary["runs"].values())
    assert summary["runs_per_experiment"] == pytest.approx(total_runs / 24)
    table = campaign.markdown_table([summary])
    assert "power 10 sd" in table and "100%" in table
    page = campaign.report([summary], campaign.noise_from_results(), campaign.machine_facts(), "")
    assert campaign.SIMULATED_HEADER in page


def test_intervals_match_their_textbook_values(campaign: ModuleType) -> None:
    """The Poisson (Garwood) and Wilson intervals the table prints."""
    assert campaign.poisson_interval(0, 1) == pytest.approx((0.0, 3.6889), abs=1e-3)
    assert campaign.poisson_interval(5, 1) == pytest.approx((1.6235, 11.6683), abs=1e-3)
    assert campaign.poisson_interval(5, 10) == pytest.approx((0.16235, 1.16683), abs=1e-4)
    assert campaign.wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-3)


def test_noise_comes_from_the_newest_real_baseline_repeats(campaign: ModuleType) -> None:
    """The default sd is the seed-to-seed sd of real baseline runs in bench/results, named."""
    noise = campaign.noise_from_results()
    assert noise.runs >= 2 and 0 < noise.sd < 0.2
    assert "trainer.json" in noise.source
