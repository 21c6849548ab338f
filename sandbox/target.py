"""Loads the research target's description (trainer/target.toml) that the sandbox and server read."""

from __future__ import annotations

import importlib.util
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TARGET_FILE = Path(__file__).resolve().parent.parent / "trainer" / "target.toml"


@dataclass(frozen=True)
class ResearchTarget:
    """What the runner needs to know about a research target, and nothing GPT-specific."""

    name: str
    target_dir: Path
    metric: str
    direction: str  # "minimize" or "maximize"
    metric_unit: str
    editable: tuple[str, ...]
    reference: dict[str, Path]  # name shown to the agent -> file on disk
    train_command: tuple[str, ...]
    artifact: str
    evaluate_command: tuple[str, ...]
    train_data: tuple[str, ...]
    eval_data: tuple[str, ...]
    eval_context: int  # the evaluation context length on the CPU (and any device not listed)
    hidden_from_training: tuple[
        str, ...
    ] = ()  # Python packages (e.g. the raw corpus) training must not see
    # Subfolders of the data directory holding the sealed holdout: mounted into the evaluator's
    # jail only for a run that scores it (RunSettings.score_holdout), never into training.
    holdout_data: tuple[str, ...] = ()
    # Modules a warm training process imports before the budget clock starts (sandbox/warm_start.py);
    # empty: training starts cold, its start-up inside the budget.
    warm_imports: tuple[str, ...] = ()
    # Evaluation context per device kind where it differs from eval_context ({"cuda": 2048}).
    eval_context_by_device: tuple[tuple[str, int], ...] = ()

    def context_for(self, device: str) -> int:
        """The evaluation context a run on `device` is scored at (and exports its model for)."""
        kind = "cuda" if device.startswith("cuda") else "cpu"
        return dict(self.eval_context_by_device).get(kind, self.eval_context)

    def hidden_paths(self) -> tuple[Path, ...]:
        """Where the hidden packages are installed, found without importing them."""
        paths: list[Path] = []
        for name in self.hidden_from_training:
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.submodule_search_locations:
                paths.extend(Path(p) for p in spec.submodule_search_locations)
            elif spec is not None and spec.origin:
                paths.append(Path(spec.origin))
        return tuple(paths)

    def baseline_files(self) -> dict[str, bytes]:
        """The editable files as shipped: what a fresh workspace starts from."""
        return {name: (self.target_dir / name).read_bytes() for name in self.editable}

    def is_better(self, candidate: float, incumbent: float) -> bool:
        """True when candidate beats incumbent in the metric's direction."""
        return candidate < incumbent if self.direction == "minimize" else candidate > incumbent

    def improvement(self, candidate: float, reference: float) -> float:
        """How much better candidate is than reference (positive = better), in metric units."""
        return reference - candidate if self.direction == "minimize" else candidate - reference


def load_target(path: Path = DEFAULT_TARGET_FILE) -> ResearchTarget:
    """Read a target description; raise ValueError naming the bad field."""
    raw = tomllib.loads(path.read_text())
    target_dir = path.resolve().parent
    direction = raw.get("direction", "minimize")
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"{path}: direction must be 'minimize' or 'maximize', not {direction!r}")
    reference = {Path(p).name: (target_dir / p).resolve() for p in raw.get("reference", [])}
    return ResearchTarget(
        name=raw["name"],
        target_dir=target_dir,
        metric=raw["metric"],
        direction=direction,
        metric_unit=raw.get("metric_unit", ""),
        editable=tuple(raw["editable"]),
        reference=reference,
        train_command=tuple(raw["train_command"]),
        artifact=raw["artifact"],
        evaluate_command=tuple(raw["evaluate_command"]),
        train_data=tuple(raw.get("train_data", [])),
        eval_data=tuple(raw.get("eval_data", [])),
        eval_context=_context(raw.get("eval_context", 256), "cpu", path),
        eval_context_by_device=tuple(
            (kind, _context(raw["eval_context"], kind, path))
            for kind in ("cuda",)
            if isinstance(raw.get("eval_context"), dict) and kind in raw["eval_context"]
        ),
        hidden_from_training=tuple(raw.get("hidden_from_training", [])),
        holdout_data=tuple(raw.get("holdout_data", [])),
        warm_imports=tuple(raw.get("warm_imports", [])),
    )


def _context(value: object, kind: str, path: Path) -> int:
    """eval_context: one length for every device, or a table by device kind ({cpu = N, cuda = M})."""
    if isinstance(value, dict):
        value = value.get(kind, value.get("cpu", 256))
    if not isinstance(value, int) or isinstance(value, bool) or not 16 <= value <= 16384:
        raise ValueError(
            f"{path}: eval_context must be a whole number from 16 to 16384, not {value!r}"
        )
    return value
