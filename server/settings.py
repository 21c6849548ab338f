"""Operator settings: everything an agent cannot change (the budget, the device, the seeds,
the noise rule, the quotas, the promotion ladder's scale levels), and the hardware fingerprint
results are compared within.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from server.refusals import LabError
from server.verdicts import ErrorBudget


def default_home() -> Path:
    return Path(
        os.environ.get("AUTORESEARCH_HOME") or Path.home() / ".cache" / "autoresearch-mcp"
    ).expanduser()


# A GPU torch can use shows one of these device nodes (NVIDIA, AMD ROCm, WSL's GPU bridge).
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def detect_device() -> str:
    """'cuda' when torch sees a GPU, else 'cpu'. Without any GPU device node there is none to
    see, and torch (2 s to import) is not imported: a CPU server starts that much sooner."""
    if not any(os.path.exists(node) for node in GPU_DEVICE_NODES):
        return "cpu"
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def torch_version() -> str:
    """The installed torch's version (as torch.__version__ says it), read without importing it."""
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "none"


LEVEL_OPTIONS = ("quota", "device", "data", "budget")


@dataclass(frozen=True)
class ScaleLevel:
    """A named rung of the promotion ladder: a budget multiple and a model size (AR_SCALE), and
    optionally the device and the data folder it runs on (server.levels settles both)."""

    name: str
    budget_factor: float = 1.0
    model_scale: int = 1
    slots: tuple[str, ...] = ()  # devices reserved for this level (empty: any slot)
    device_hours_quota: float | None = None  # promotions stop when the level has used this much
    device: str | None = None  # cpu | cuda | cuda:N (None: the server's device)
    data: Path | None = None  # a prepared data folder of the same target (None: the server's)
    budget_seconds: float | None = (
        None  # the level's base budget before the factor (None: by device)
    )

    @classmethod
    def parse(cls, text: str) -> ScaleLevel:
        """'M=5x1' (budget x5, model scale 1), optionally '@cuda:1+cuda:2' (reserved slots) and
        options ':quota=2.5' (device-hours), ':device=cuda:0', ':data=/path/to/data' and
        ':budget=300' (the level's base budget in seconds of its clock)."""
        usage = (
            f"scale level {text!r} is malformed; use NAME=BUDGETxMODEL[@SLOT+SLOT]"
            "[:quota=HOURS][:device=cpu|cuda|cuda:N][:data=DIR][:budget=SECONDS], "
            "e.g. M=5x1 or L=1x1:device=cuda:0:data=/data/climbmix/data"
        )
        # Options split at ':KEY=' only: a device (cuda:0) and a path may hold colons themselves.
        head, *options = re.split(rf":(?=(?:{'|'.join(LEVEL_OPTIONS)})=)", text.strip())
        match = re.fullmatch(r"([A-Za-z][\w-]{0,15})=([0-9.]+)x(\d+)(?:@([\w:+]+))?", head)
        if not match:
            raise ValueError(usage)
        name, factor, model, slots = match.groups()
        values: dict[str, str] = {}
        for option in options:
            key, _, value = option.partition("=")
            if key in values or not value:
                raise ValueError(f"{usage} (option {key!r} is empty or given twice)")
            values[key] = value
        device = values.get("device")
        if device is not None and not re.fullmatch(r"cpu|cuda(:\d{1,2})?", device):
            raise ValueError(f"{usage} (device {device!r}: send cpu, cuda or cuda:N)")
        try:
            level = cls(
                name,
                float(factor),
                int(model),
                tuple(slots.split("+")) if slots else (),
                float(values["quota"]) if "quota" in values else None,
                device,
                Path(values["data"]).expanduser() if "data" in values else None,
                float(values["budget"]) if "budget" in values else None,
            )
        except ValueError as exc:
            raise ValueError(f"{usage} ({exc})") from None
        if not level.budget_factor > 0 or (
            level.budget_seconds is not None and not level.budget_seconds > 0
        ):
            raise ValueError(f"{usage} (budgets must be positive)")
        return level

    @property
    def own_machine(self) -> bool:
        """Whether the level names its own device, data or base budget (server.levels)."""
        return (self.device, self.data, self.budget_seconds) != (None, None, None)


def default_budget_kind(device: str) -> Literal["wall", "cpu"]:
    """CPU time on the CPU (robust to a busy neighbour), the wall clock on a GPU."""
    return "wall" if device.startswith("cuda") else "cpu"


def default_budget(device: str, kind: Literal["wall", "cpu"], threads: int = 1) -> float:
    """300 s on a GPU; 60 s on the CPU (a CPU-time budget counts every thread: 60 s per thread)."""
    if device.startswith("cuda"):
        return 300.0
    return 60.0 * (max(1, threads) if kind == "cpu" else 1)


DEFAULT_SCALES = (ScaleLevel("S", 1.0, 1), ScaleLevel("M", 5.0, 1), ScaleLevel("L", 5.0, 2))


@dataclass
class LabSettings:
    """Operator settings: everything an agent cannot change."""

    home: Path = field(default_factory=default_home)
    device: str = "auto"  # auto | cpu | cuda
    budget_seconds: float | None = None  # default: 60 on CPU, 300 on CUDA
    # None: by device. On the CPU a CPU-time budget (per thread), so that a busy neighbour slows
    # a run down without shortening its training (bench/noise.py: sd 0.0065 beside a busy
    # process vs 0.0063 idle; a wall budget's sd is 0.018 idle and follows the load); on a GPU
    # the wall clock (the GPU is not shared with the neighbours' CPU load).
    budget_kind: Literal["wall", "cpu"] | None = None
    cpu_slots: int = 1
    # Prepare a busy slot's next run ahead (sandbox/standby.py: folder written, training
    # process warmed) so its clock starts as soon as the slot frees. auto: GPU slots only (on a
    # CPU slot the warm-up would take the running run's cores); on: every slot; off: none.
    prepare_ahead: Literal["auto", "on", "off"] = "auto"
    seed: int = 1337  # the paired-comparison seed; repeats use seed + n
    noise_k: float = 2.0  # drift checks and the ladder's transfer verdicts: k x sd
    baseline_repeats: int = 4
    # The verdict rule's error budget (server.verdicts): over `campaign_experiments` changes that do
    # nothing, `false_wins_per_campaign` false improvements are expected; `screen_share` of them
    # become candidates, each re-run on `confirm_runs` fresh seeds.
    campaign_experiments: int = 700
    false_wins_per_campaign: float = 0.5
    screen_share: float = 0.16
    confirm_runs: int = 4
    # The sealed holdout (prepare's third split): scored only for leaderboard entries -- the
    # baseline's runs, `holdout_runs` extra fresh-seed runs of each confirmed improvement, and
    # promotions -- at most `holdout_max_reads` times over the record (each scoring is a read).
    holdout_runs: int = 2
    holdout_max_reads: int = 200
    contended_share: float = 0.7  # CPU share below this marks a wall-clock CPU run `contended`
    contended_share_cpu_budget: float = (
        0.3  # the same under a CPU-time budget (only starvation matters)
    )
    call_wait_seconds: float = 45.0  # bound on one blocking tool call (clients cut long calls)
    max_live_per_agent: int = 1
    # Every run an agent asks for counts (experiments, confirmations, promotions, combinations).
    # autoresearch's longest campaign ran ~700 experiments: 1000 fits a real one and still bounds
    # what one agent can take (and read back through its scores). None or 0: no cap.
    max_experiments_per_agent: int | None = 1000
    claim_ttl_minutes: float = 60.0
    require_isolation: bool = False
    keep_run_dirs: Literal["never", "failed", "always"] = "failed"
    eval_timeout_seconds: float = 180.0
    eval_windows: int | None = None  # fewer val windows: only for tests and smoke runs
    arxiv_url_format: str | None = None  # tests point arXiv at loopback
    arxiv_min_interval_s: float = 3.0
    target_file: Path | None = None
    scales: tuple[ScaleLevel, ...] = DEFAULT_SCALES  # the promotion ladder, smallest first
    auto_promote: bool = False  # promote confirmed improvements to the next level automatically
    promotion_repeats: int = 2  # paired runs (seeds) per side at the larger level
    drift_check_every: int = 10  # re-run the best after this many experiments (0: never)
    start_scheduler: bool = True
    executor: Literal["local", "ray"] = "local"  # ray: experiments as tasks on a Ray cluster
    ray_address: str | None = None  # e.g. HEAD:6379; None: RAY_ADDRESS or a local Ray
    ray_cpus_per_slot: int = 1  # on a CPU-only Ray cluster: CPUs per experiment (one slot each)

    def prepares_ahead(self, slot: str) -> bool:
        """Whether `slot`'s next run is prepared while it is busy (prepare_ahead)."""
        if self.prepare_ahead == "auto":
            return slot.startswith("cuda")
        return self.prepare_ahead == "on"

    def level(self, scale: str | None) -> ScaleLevel:
        """The operator's definition of a scale level ('S' is the default budget and model)."""
        name = scale or "S"
        for level in self.scales:
            if level.name == name:
                return level
        known = ", ".join(level.name for level in self.scales)
        raise LabError(f"scale level {name!r} does not exist; the levels are {known}")

    def slot_accepts(self, slot: str, scale: str) -> bool:
        """A level with reserved slots runs only there; reserved slots serve only their level."""
        reserved = {s: level.name for level in self.scales for s in level.slots}
        own = self.level(scale).slots if any(lv.name == scale for lv in self.scales) else ()
        if own:
            return slot in own
        return slot not in reserved

    def resolved_device(self) -> str:
        return detect_device() if self.device == "auto" else self.device

    def resolved_budget_kind(self) -> Literal["wall", "cpu"]:
        """The budget's clock: as set, else CPU time on the CPU and the wall clock on a GPU."""
        if self.budget_kind is not None:
            return self.budget_kind
        return default_budget_kind(self.resolved_device())

    def resolved_budget(self, threads: int = 1) -> float:
        """The budget in seconds of its clock: as set, else by device (default_budget)."""
        if self.budget_seconds is not None:
            return float(self.budget_seconds)
        return default_budget(self.resolved_device(), self.resolved_budget_kind(), threads)

    def error_budget(self) -> ErrorBudget:
        """The verdict rule's error budget (server.verdicts.ErrorBudget) from these settings."""
        if self.campaign_experiments < 1 or not self.false_wins_per_campaign > 0:
            raise LabError(
                "the error budget needs campaign_experiments >= 1 and false_wins_per_campaign > 0 "
                f"(got {self.campaign_experiments} and {self.false_wins_per_campaign}); e.g. 700 and 0.5"
            )
        if not 0 < self.screen_share < 1 or self.confirm_runs < 2:
            raise LabError(
                f"screen_share must be in (0, 1) and confirm_runs >= 2 (got {self.screen_share} and "
                f"{self.confirm_runs}); the defaults are 0.16 and 4"
            )
        return ErrorBudget(
            campaign_experiments=self.campaign_experiments,
            false_wins=self.false_wins_per_campaign,
            screen_share=self.screen_share,
            confirm_runs=self.confirm_runs,
        )


def hardware_fingerprint(device: str, threads: int) -> str:
    """Device name | torch version | threads: results are only compared within one fingerprint."""
    if device.startswith("cuda"):
        import torch

        index = int(device.split(":")[1]) if ":" in device else 0
        name = torch.cuda.get_device_name(index) if torch.cuda.is_available() else device
    else:
        import platform

        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return f"{name} | torch {torch_version()} | {threads} threads"
