"""One server, one research target: choosing it, preparing its data, binding the record to it.

A target is a folder holding target.toml (sandbox/target.py reads it; docs/targets.md says how to
write one). The server reads only that description: the metric's name, unit and direction come
from it, never from code here. The record (history.sqlite) is bound to the first target that
opens it, and every experiment row names its target, so that two servers of different targets
never share a record by accident: opening a record with another target is refused.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from sandbox.target import DEFAULT_TARGET_FILE, ResearchTarget, load_target, resolve_target_file
from server.diff_review import DEFAULT_LIMITS, EmbeddedLimits
from server.refusals import LabError
from server.settings import default_home
from server.store import Store


class TargetMismatch(LabError):
    """The record belongs to another research target."""


def open_target(path: Path | str | None) -> ResearchTarget:
    """The target a folder (or its target.toml) describes; None: the bundled default."""
    return load_target(resolve_target_file(path))


def target_home(target: ResearchTarget, home: Path | None) -> Path:
    """The state folder: the one given, else the default home (a folder of its own for every
    target but the bundled default, so that targets never share data or a record by accident)."""
    if home is not None:
        return Path(home).expanduser()
    base = default_home()
    return (
        base if target.target_dir == DEFAULT_TARGET_FILE.parent else base / "targets" / target.name
    )


TARGET_MARK = ".target"  # in the data folder: the name of the target that prepared it
# The split secret every target's prepare step keeps in its data folder (hex text, mode 0600)
# and takes from the environment when given (to prepare the same split on another node).
SPLIT_KEY_FILE = "split.key"
SPLIT_SECRET_ENV = "AUTORESEARCH_SPLIT_SECRET"


def read_split_key(data_dir: Path) -> str | None:
    """The split secret a prepared data folder holds (its hex text), or None."""
    try:
        return (data_dir / SPLIT_KEY_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def run_prepare(
    target: ResearchTarget,
    data_dir: Path,
    extra: list[str],
    *,
    split_secret: str | None = None,
    quiet: bool = False,
) -> int:
    """Run the target's trusted prepare_command (idempotent: a prepared folder is kept).

    `extra` (options the CLI did not know, and --force) go to the target's own prepare. A data
    folder another target prepared is refused, never prepared over.
    """
    mark = data_dir / TARGET_MARK
    if mark.is_file() and mark.read_text().strip() != target.name:
        print(
            f"prepare: {data_dir} holds the data of the research target "
            f"{mark.read_text().strip()!r}, not {target.name!r}: give this target a --data-dir "
            "of its own (or pass that target's --target)",
            file=sys.stderr,
        )
        return 2
    if not target.prepare_command:
        if (data_dir / "manifest.json").is_file():
            return 0
        print(
            f"prepare: {target.name} has no prepare_command and {data_dir} has no manifest.json",
            file=sys.stderr,
        )
        return 2
    argv = [
        part.format(python=sys.executable, target_dir=target.target_dir, data_dir=data_dir)
        for part in target.prepare_command
    ] + extra
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if split_secret:
        env[SPLIT_SECRET_ENV] = split_secret
    code = subprocess.run(
        argv,
        cwd=target.target_dir,
        env=env,
        check=False,
        stdout=subprocess.DEVNULL if quiet else None,  # its errors still reach stderr
    ).returncode
    if code == 0:
        mark.write_text(target.name + "\n")
    return code


def check_record(home: Path, target: ResearchTarget) -> None:
    """Refuse a home whose record belongs to another target (before anything is prepared there)."""
    path = home / "history.sqlite"
    if path.is_file():
        bind_record(Store(path), target, bind=False)


def embedded_limits(target: ResearchTarget) -> EmbeddedLimits:
    """The embedded_data thresholds of this target (lower where its eval data is public)."""
    return dataclasses.replace(DEFAULT_LIMITS, **dict(target.embedded_data))


def bind_record(store: Store, target: ResearchTarget, *, bind: bool = True) -> None:
    """Bind the record to `target` on first use; refuse a record bound to another target.

    Rows written before targets were recorded take the first target that opens the record.
    The store learns the metric's direction, which its "best first" orderings follow.
    """
    bound = store.bound_target()
    if bound is None:
        if not bind:
            return
        store.bind_target(target.name, target.metric, target.direction)
    elif (bound["name"], bound["metric"], bound["direction"]) != (
        target.name,
        target.metric,
        target.direction,
    ):
        raise TargetMismatch(
            f"the record {store.path} belongs to the research target {bound['name']!r} "
            f"({bound['metric']}, {bound['direction']}), not {target.name!r} "
            f"({target.metric}, {target.direction}): serve it with that target's --target, or give "
            "this target a --data-dir of its own"
        )
    store.direction = target.direction
    store.assumed_sd = target.assumed_sd
    store.tie_break = target.tie_break
