"""Loads the research target's description (trainer/target.toml) that the sandbox and server read."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TARGET_FILE = Path(__file__).resolve().parent.parent / "trainer" / "target.toml"


@dataclass(frozen=True)
class ResearchTarget:
    """What the runner needs to know about a research target, and nothing specific to one."""

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
    # Decimals of the metric agents see (finer figures would carry bits of the hidden split back).
    metric_decimals: int = 4
    # The trusted data preparation (run by the server, outside any jail, for `prepare` and before
    # serving when the data folder has no manifest); () for a target whose data is made elsewhere.
    prepare_command: tuple[str, ...] = ()
    # A second figure the evaluator reports that orders equal metric values (name, direction),
    # published at tie_break_decimals (fewer than the metric's: every published figure is a
    # channel from the hidden split back to the agent).
    tie_break: tuple[str, str] | None = None
    tie_break_decimals: int = 2
    # Integer keys of the evaluator's report the server may publish (counts of what was scored).
    published_counts: tuple[str, ...] = ()
    # The seed-to-seed sd of the metric assumed until the baseline's runs measure it.
    assumed_sd: float = 0.02
    # The research program agents read (program.md, with {goal}, {budget}... filled in by the server).
    program_file: Path | None = None
    # Lower embedded_data thresholds (server/diff_review.py) for a target whose eval data is
    # public: (name, limit) of literal_chars, text_chars, spaceless_run, number_run, numbers.
    embedded_data: tuple[tuple[str, int], ...] = ()

    @property
    def better_word(self) -> str:
        """'lower' or 'higher': which way the metric improves, for text an agent or user reads."""
        return "lower" if self.direction == "minimize" else "higher"

    @property
    def metric_label(self) -> str:
        """The metric with its direction, for axis labels and tool descriptions."""
        return f"{self.metric} ({self.better_word} is better)"

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

    def loss(self, value: float) -> float:
        """The metric oriented as a loss, smaller = better (for sorting and running bests)."""
        return value if self.direction == "minimize" else -value

    def round(self, value: float) -> float:
        """The metric as agents see it."""
        return round(float(value), self.metric_decimals)


IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
REQUIRED_FIELDS = ("name", "metric", "editable", "train_command", "artifact", "evaluate_command")


def resolve_target_file(path: Path | str | None) -> Path:
    """A target folder or its target.toml (None: the bundled default) -> the target.toml path."""
    if path is None:
        return DEFAULT_TARGET_FILE
    path = Path(path).expanduser()
    candidate = path / "target.toml" if path.is_dir() else path
    if not candidate.is_file():
        raise ValueError(f"{path}: no target.toml there (give a folder holding one, or the file)")
    return candidate.resolve()


def load_target(path: Path = DEFAULT_TARGET_FILE) -> ResearchTarget:
    """Read a target description; raise ValueError naming the bad field."""
    raw = tomllib.loads(path.read_text())
    target_dir = path.resolve().parent
    direction = raw.get("direction", "minimize")
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"{path}: direction must be 'minimize' or 'maximize', not {direction!r}")
    missing = [key for key in REQUIRED_FIELDS if key not in raw]
    if missing:
        raise ValueError(
            f"{path}: missing {', '.join(missing)} (docs/targets.md lists every field)"
        )
    if not isinstance(raw["metric"], str) or not IDENTIFIER.fullmatch(raw["metric"]):
        raise ValueError(f"{path}: metric must be a plain identifier (letters, digits, _)")
    decimals = _decimals(raw.get("metric_decimals", 4), "metric_decimals", path)
    tie_break = raw.get("tie_break")
    if tie_break is not None and (
        not isinstance(tie_break, dict)
        or not isinstance(tie_break.get("metric"), str)
        or not IDENTIFIER.fullmatch(tie_break["metric"])
        or tie_break.get("direction") not in ("minimize", "maximize")
    ):
        raise ValueError(
            f"{path}: tie_break must be {{ metric = NAME, direction = 'minimize' | 'maximize' }} "
            "with NAME a plain identifier"
        )
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
        metric_decimals=decimals,
        prepare_command=tuple(raw.get("prepare_command", [])),
        tie_break=(tie_break["metric"], tie_break["direction"]) if tie_break else None,
        tie_break_decimals=_decimals(
            (tie_break or {}).get("decimals", 2), "tie_break.decimals", path
        ),
        published_counts=tuple(raw.get("published_counts", [])),
        assumed_sd=_positive(raw.get("assumed_sd", 0.02), "assumed_sd", path),
        program_file=_program(raw.get("program"), target_dir, path),
        embedded_data=_embedded_limits(raw.get("embedded_data", {}), path),
    )


EMBEDDED_LIMITS = ("literal_chars", "text_chars", "spaceless_run", "number_run", "numbers")


def _embedded_limits(value: object, path: Path) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, dict) or not all(
        key in EMBEDDED_LIMITS and isinstance(v, int) and not isinstance(v, bool) and v > 0
        for key, v in value.items()
    ):
        raise ValueError(
            f"{path}: embedded_data must map some of {', '.join(EMBEDDED_LIMITS)} to positive "
            "whole numbers"
        )
    return tuple(sorted(value.items()))


def _decimals(value: object, field: str, path: Path) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 8:
        raise ValueError(f"{path}: {field} must be a whole number from 1 to 8")
    return value


def _program(value: object, target_dir: Path, path: Path) -> Path | None:
    """The program file named (it must exist), else the folder's program.md if it has one."""
    if value is None:
        default = target_dir / "program.md"
        return default.resolve() if default.is_file() else None
    if not isinstance(value, str) or not (target_dir / value).is_file():
        raise ValueError(f"{path}: program must name the target's program.md, not {value!r}")
    return (target_dir / value).resolve()


def _positive(value: object, field: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e6:
        raise ValueError(f"{path}: {field} must be a positive number, not {value!r}")
    return float(value)


def _context(value: object, kind: str, path: Path) -> int:
    """eval_context: one length for every device, or a table by device kind ({cpu = N, cuda = M})."""
    if isinstance(value, dict):
        value = value.get(kind, value.get("cpu", 256))
    if not isinstance(value, int) or isinstance(value, bool) or not 16 <= value <= 16384:
        raise ValueError(
            f"{path}: eval_context must be a whole number from 16 to 16384, not {value!r}"
        )
    return value
