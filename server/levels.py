"""Where each promotion level runs: its device, its data folder, its clock and base budget, the
threads a run gets, the runner that checks its data, and the hardware fingerprint its results
compare within.

Most levels share the server's machine: the default ladder's S, M and L differ only in budget
and model size. A level that names its own device or data (`--scale
'L=1x1:device=cuda:0:data=/big/climbmix/data'`) gets a machine of its own, so a win found on the
CPU with the bundled corpus is promoted to the GPU target and judged there by the ladder's
transfer verdict. Its runs carry their own fingerprint (device, threads, val set), so the
level's baseline, noise and leaderboard are its own and never mix with the CPU's.

Everything is checked when the server starts: a level naming a GPU this machine lacks, or a
data folder that is missing, unprepared or another target's, is refused with what to do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sandbox.jail import IsolationLevel
from sandbox.runner import ExperimentRunner, RunRefused, RunSettings
from sandbox.target import ResearchTarget
from server.machine import threads_per_run, val_set_fingerprint
from server.refusals import LabError
from server.settings import (
    LabSettings,
    ScaleLevel,
    default_budget,
    default_budget_kind,
    hardware_fingerprint,
)
from server.targets import TARGET_MARK

BudgetKind = Literal["wall", "cpu"]


@dataclass(frozen=True)
class LevelMachine:
    """What one level's runs train on and compare within."""

    device: str  # the device a run trains on: 'cpu', or a GPU ('cuda:0'; a slot may override)
    data_dir: Path
    runner: ExperimentRunner
    budget_kind: BudgetKind
    base_budget: float  # seconds of its clock, before the level's budget factor
    threads: int
    hardware: str  # device name | torch | threads | val set: results compare within one


def _same_kind(a: str, b: str) -> bool:
    return a.split(":")[0] == b.split(":")[0]


def _check_device(level: ScaleLevel, device: str) -> None:
    """A GPU level needs that GPU here; say which devices there are."""
    if not device.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= count:
        seen = ", ".join(f"cuda:{i}" for i in range(count)) or "none (torch sees no CUDA device)"
        raise LabError(
            f"level {level.name} names device {device}, which this machine does not have; "
            f"its GPUs: {seen}. Send --scale with an existing device, or drop ':device='"
        )


def level_data_dir(level: ScaleLevel, target: ResearchTarget) -> Path:
    """The prepared data folder a level names (the folder holding manifest.json, or a home
    whose data/ holds it), refused if it is missing, unprepared or another target's."""
    assert level.data is not None
    named = level.data.expanduser().resolve()
    folder = next(
        (p for p in (named, named / "data") if (p / "manifest.json").is_file()),
        None,
    )
    if folder is None:
        raise LabError(
            f"level {level.name}'s data folder {named} is not prepared (no manifest.json there "
            f"or in its data/); prepare it first: autoresearch-mcp prepare --home {named} "
            f"--target {target.target_dir} [--source NAME | --corpus PATH]"
        )
    mark = folder / TARGET_MARK
    if mark.is_file() and mark.read_text().strip() != target.name:
        raise LabError(
            f"level {level.name}'s data folder {folder} holds the data of the research target "
            f"{mark.read_text().strip()!r}, not {target.name!r}: name a folder prepared for this target"
        )
    return folder


class LevelMachines:
    """Every level's machine, the run slots they add, and the ladder with each level's slots."""

    def __init__(
        self,
        settings: LabSettings,
        target: ResearchTarget,
        home: Path,
        server_device: str,
        server_slots: Sequence[str],
        server_runner: ExperimentRunner,
        isolation: IsolationLevel,
    ) -> None:
        self.server_device = server_device
        self.settings = settings
        levels: list[ScaleLevel] = []
        slots = list(server_slots)
        for level in settings.scales:
            device = level.device or server_device
            _check_device(level, device)
            own_slots = level.slots
            if not own_slots and level.device and not _same_kind(level.device, server_device):
                # Another kind of device than the server's: a slot of its own, for this level only.
                own_slots = (device if device == "cpu" or ":" in device else "cuda:0",)
            elif not own_slots and level.device and ":" in level.device:
                own_slots = (level.device,)  # one of the server's GPUs, reserved for the level
            slots += [s for s in own_slots if s not in slots]
            levels.append(dataclasses.replace(level, slots=own_slots))
        self.levels = tuple(levels)
        self.slots = slots
        self.threads = threads_per_run(slots)
        budget_kind = settings.resolved_budget_kind()
        self.default = self._machine(
            server_device,
            server_runner,
            budget_kind,
            settings.resolved_budget(self.threads),
        )
        self._by_level: dict[str, LevelMachine] = {}
        runners: dict[Path, ExperimentRunner] = {server_runner.data_dir: server_runner}
        for level in self.levels:
            if not level.own_machine:
                self._by_level[level.name] = self.default
                continue
            device = level.device or server_device
            if level.slots and device.startswith("cuda"):
                device = level.slots[0]
            runner = server_runner
            if level.data is not None:
                data_dir = level_data_dir(level, target)
                if data_dir not in runners:
                    try:
                        runners[data_dir] = ExperimentRunner(
                            target,
                            data_dir,
                            home / "runs",
                            keep_run_dirs=settings.keep_run_dirs,
                            isolation=isolation,
                        )
                    except RunRefused as exc:
                        raise LabError(f"level {level.name}: {exc}") from None
                runner = runners[data_dir]
            same_kind = _same_kind(device, server_device)
            kind = budget_kind if same_kind else default_budget_kind(device)
            base = level.budget_seconds or (
                self.default.base_budget
                if same_kind
                else default_budget(device, kind, self.threads)
            )
            self._by_level[level.name] = self._machine(device, runner, kind, base)

    def _machine(
        self, device: str, runner: ExperimentRunner, kind: BudgetKind, base_budget: float
    ) -> LevelMachine:
        hardware = hardware_fingerprint(device, self.threads)
        return LevelMachine(
            device=device,
            data_dir=runner.data_dir,
            runner=runner,
            budget_kind=kind,
            base_budget=float(base_budget),
            threads=self.threads,
            hardware=f"{hardware} | val {val_set_fingerprint(runner.expected_hashes)}",
        )

    def of(self, scale: str | None) -> LevelMachine:
        """The machine of a level (an unknown name: the server's own; Lab.level refuses it)."""
        return self._by_level.get(scale or "S", self.default)

    def run_settings(self, seed: int, budget_seconds: float, scale: str | None) -> RunSettings:
        """What the runner is told for one run of `scale` (a GPU level: the executor sets the slot)."""
        level, machine, s = self.settings.level(scale), self.of(scale), self.settings
        return RunSettings(
            extra_env={"AR_SCALE": str(level.model_scale)},
            budget_seconds=budget_seconds,
            budget_kind=machine.budget_kind,
            device=machine.device if not machine.device.startswith("cuda") else self.slots[0],
            seed=seed,
            threads=machine.threads,
            eval_timeout_seconds=s.eval_timeout_seconds,
            eval_windows=s.eval_windows,
            require_isolation=s.require_isolation,
        )

    def level_runners(self) -> dict[str, ExperimentRunner]:
        """The runner of each level whose data is not the server's (for the executor)."""
        return {
            name: machine.runner
            for name, machine in self._by_level.items()
            if machine.runner is not self.default.runner
        }

    def own_machines(self) -> list[str]:
        """The levels that name their own device or data."""
        return [
            name
            for name, machine in self._by_level.items()
            if machine.device != self.default.device or machine.runner is not self.default.runner
        ]

    def own_machine_lines(self) -> list[str]:
        """One line per level with a machine of its own, for the operator at start."""
        own = set(self.own_machines())
        return [
            f"level {d['level']} runs on {d['device']} with the data in "
            f"{self.of(str(d['level'])).data_dir} ({d['budget_kind']} budget of "
            f"{d['budget_seconds']} s): its own baseline and noise"
            for d in self.describe()
            if d["level"] in own
        ]

    def describe(self) -> list[dict[str, object]]:
        """Each level's device, data, clock and budget, for the agents (get_ladder) and the
        operator: the data folder by its last two names only (no host paths to the agents)."""
        described = []
        for level in self.levels:
            machine = self.of(level.name)
            described.append(
                {
                    "level": level.name,
                    "device": machine.device,
                    "data": f"{machine.data_dir.parent.name}/{machine.data_dir.name}",
                    "own_data": machine.runner is not self.default.runner,
                    "budget_kind": machine.budget_kind,
                    "budget_seconds": round(machine.base_budget * level.budget_factor, 3),
                    "model_scale": level.model_scale,
                    "hardware": machine.hardware,
                }
            )
        return described
