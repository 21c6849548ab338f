"""Rebuilds kept answers as soon as the record changes, before a reader asks for them.

The leaderboard (get_leaderboard, get_history's summary, the briefing) and the dashboard's
chart are served from answers kept until `experiments` changes (server/store/read_cache.py).
After each result, the first reader used to pay the rebuild: 40-60 ms at 10^5 experiments for
the leaderboard's per-agent table alone, more beside 100 agents' calls, which made
get_leaderboard's p95 (114 ms at ~20 calls/s, bench/agents.py) miss its 50 ms goal although
its p50 was 4 ms; and 230-460 ms for the chart, which an open dashboard page refetches after
every change. A background thread reads the table's change counter every
WARM_INTERVAL_SECONDS (one indexed read) and, when it moved, runs each job: the level-S
leaderboard always; the chart only while someone reads it (its `Demand`: the chart, or the
queue that an open page polls every 2 s, asked for within the last DEMAND_SECONDS), so a
server nobody watches spends nothing on it. Readers then find the
answer kept, or wait for a rebuild already under way rather than starting one. The answers are
exactly those a reader would have built (the same cache, the same keys): nothing is served
stale.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from server.store import Store
from server.store.read_cache import experiments_changes

log = logging.getLogger(__name__)

WARM_INTERVAL_SECONDS = 0.5
DEMAND_SECONDS = 120.0  # an open dashboard page refetches the chart after every change


class Demand:
    """When a reader last asked for an answer: rebuilt ahead only while someone reads it."""

    def __init__(self, seconds: float = DEMAND_SECONDS) -> None:
        self.seconds = seconds
        self._last = float("-inf")

    def asked(self) -> None:
        self._last = time.monotonic()

    def recent(self) -> bool:
        return time.monotonic() - self._last <= self.seconds


@dataclass(frozen=True)
class WarmJob:
    """One kept answer to rebuild after each change: `rebuild()` while `wanted()`."""

    name: str
    rebuild: Callable[[], object]
    wanted: Callable[[], bool] = lambda: True


class CacheWarmer:
    """A daemon thread that runs each wanted job whenever the record's change counter moves."""

    def __init__(
        self, store: Store, jobs: Sequence[WarmJob], interval: float = WARM_INTERVAL_SECONDS
    ) -> None:
        self.store = store
        self.jobs = tuple(jobs)
        self.interval = interval
        self.rebuilds: dict[str, int] = {job.name: 0 for job in self.jobs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cache-warmer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _loop(self) -> None:
        seen: dict[str, str] = {}  # per job: the counter value it was last rebuilt at
        while not self._stop.wait(self.interval):
            try:
                version = experiments_changes(self.store.db)
            except Exception:  # warming only saves time: never let it end the thread
                log.exception("reading the record's change counter failed; trying again")
                continue
            if version is None:
                continue
            for job in self.jobs:
                if seen.get(job.name) == version or not job.wanted():
                    continue
                try:
                    job.rebuild()
                except Exception:
                    log.exception("rebuilding the kept %s failed; trying again", job.name)
                    continue
                seen[job.name] = version
                self.rebuilds[job.name] += 1
