"""Who wrote the code a text came from: the authors its untrusted block is labelled with.

Text an agent's code wrote or produced (its diffs, its log tail, a failure that quotes its model,
the file itself) reaches anyone but its authors inside an untrusted block (server/untrusted.py).
The authors of a run's code are recorded when it is queued (`code_authors`, see
server.record.code_authors); those of a workspace are kept per agent (`agents.
workspace_authors`): the others whose code it took in, by a checkout or by applying a diff shown
in another agent's block. The workspace's parent experiment is not enough: a run answered by an
earlier one (dedupe) or re-queued after a restart moves the parent without changing the files.
Authorship only grows until the next checkout: over-labelling is safe, under-labelling is not.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Sequence
from typing import Protocol

from server.record import SERVER_AGENT
from server.store import Store


class AuthorshipLab(Protocol):
    """What these functions need of the Lab (server.lab imports this module)."""

    store: Store

    def workspace_parent(self, agent: str) -> int | None: ...


# Per lab (held weakly: a closed lab's locks go with it) and per agent.
_locks: weakref.WeakKeyDictionary[AuthorshipLab, dict[str, threading.RLock]] = (
    weakref.WeakKeyDictionary()
)
_locks_guard = threading.Lock()


def workspace_lock(lab: AuthorshipLab, agent: str) -> threading.RLock:
    """One agent's workspace calls, one at a time: a change of its files together with its
    authors, a read of them together with its labels. Two calls of one agent at once (checkout
    and apply_patch in worker threads) otherwise left files holding another agent's code with
    authors that lacked them."""
    with _locks_guard:
        return _locks.setdefault(lab, {}).setdefault(agent, threading.RLock())


def workspace_authors(lab: AuthorshipLab, agent: str) -> list[str]:
    """Who wrote the code in `agent`'s workspace: the agent and the others whose code it took
    in. An agent from before the set gets it from its workspace's parent, once."""
    others = lab.store.workspace_authors(agent)
    if others is None:
        others = lab.store.code_authors_of(lab.workspace_parent(agent))
        lab.store.set_workspace_authors(agent, others)
    return sorted({agent, *others})


def take_in(lab: AuthorshipLab, agent: str, authors: Iterable[str]) -> None:
    """`agent`'s workspace now also holds code of `authors` (a diff applied from their block)."""
    held = set(workspace_authors(lab, agent))
    if not held.issuperset(authors):
        lab.store.set_workspace_authors(agent, held.union(authors))


def run_authors(
    lab: AuthorshipLab,
    agent: str,
    kind: str,
    parent_id: int | None,
    code_from: Sequence[int],
    from_workspace: bool,
) -> list[str]:
    """The authors a new run's code records: its parent's and those of `code_from` (experiments
    merged into its files: its diff vs its parent quotes the parent's lines), its workspace's
    for a run of the agent's workspace, and the agent itself for an agent's experiment (a server
    run of recorded code adds no author)."""
    authors = set(lab.store.code_authors_of(parent_id, *code_from))
    if from_workspace:
        authors.update(workspace_authors(lab, agent))
    if kind == "experiment" and agent != SERVER_AGENT:
        authors.add(agent)
    return sorted(authors)
