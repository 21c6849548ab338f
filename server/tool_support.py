"""What every MCP tool module shares: the annotations, the argument fields, the refusal
translation (an anticipated error becomes a ToolError whose text reaches the model) and the
hop to a worker thread. server/app.py defines the core tools; server/app_*.py modules add
the tools of one feature each (memory, suggestions, ablations) through these helpers.
"""

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import anyio
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from sandbox.patch import PatchRejected
from sandbox.runner import RunRefused
from sandbox.workspace import PathRefused
from server import authorship
from server.lab import Lab, LabError
from server.ladder import PromotionRefused
from server.papers import PaperSearchError
from server.store import MAX_ROW_ID
from server.untrusted import agent_text

log = logging.getLogger(__name__)

# The name of the calling agent (the bearer token's client, or the stdio default).
AgentName = Callable[[], str]

READ_ONLY = ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)
EDITS = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
)
RUNS = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
)
ONLINE = ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=True
)

T = TypeVar("T")


def id_field(description: str) -> Any:
    """An experiment-id argument: a whole number from 1 to MAX_ROW_ID (a clear refusal otherwise)."""
    return Field(
        description=f"{description} (a whole number from 1 to {MAX_ROW_ID})", ge=1, le=MAX_ROW_ID
    )


@contextmanager
def refusals() -> Iterator[None]:
    """Turn every anticipated refusal into a ToolError whose text reaches the model."""
    try:
        yield
    except ToolError:
        raise
    except (
        LabError,
        PathRefused,
        PatchRejected,
        RunRefused,
        PaperSearchError,
        PromotionRefused,
    ) as exc:
        raise ToolError(str(exc)) from None


@contextmanager
def quoting_workspace(lab: Lab, agent: str, also: Iterable[str] = ()) -> Iterator[None]:
    """The agent's workspace calls one at a time (authorship.workspace_lock); an edit's refusal
    quotes lines of the workspace and of the edit: inside an untrusted block when either holds
    another agent's code (a checkout; `also`: the authors of a diff sent back from a block)."""
    try:
        with authorship.workspace_lock(lab, agent):
            yield
    except PatchRejected as exc:
        authors = {*authorship.workspace_authors(lab, agent), *also}
        shown = agent_text(exc.quoted, sorted(authors)) or ""
        if exc.quoted and shown != exc.quoted:
            raise PatchRejected(str(exc).replace(exc.quoted, shown)) from None
        raise


@contextmanager
def resource_refusals(uri: str) -> Iterator[None]:
    """The same refusals for resource reads. Only a ResourceError's message reaches the client:
    anything else raised in a resource template arrives as a bare 'Error creating resource', so
    an unexpected error is logged and answered with a message that says what to read instead."""
    try:
        with refusals():
            yield
    except ToolError as exc:
        raise ResourceNotFoundError(str(exc)) from None
    except Exception:
        log.exception("reading resource %r failed", uri[:200])
        raise ResourceNotFoundError(
            f"{uri[:80]!r} could not be read; list_resources and list_resource_templates show what "
            "exists (experiment://ID with an id from get_history, autoresearch://workspace/NAME with a "
            "name from list_files)"
        ) from None


async def in_thread(fn: Callable[[], T], limiter: anyio.CapacityLimiter | None = None) -> T:
    """Run blocking code in a worker thread (anyio's shared pool unless `limiter` says otherwise)."""
    return await anyio.to_thread.run_sync(fn, limiter=limiter)


class OwnThreads:
    """A tool's own small thread limiter, made on first use (inside the event loop): calls past
    it wait without holding one of the shared worker threads."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._limiter: anyio.CapacityLimiter | None = None

    def get(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.threads)
        return self._limiter
