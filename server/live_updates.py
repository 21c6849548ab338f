"""Live updates: subscribers to `autoresearch://leaderboard` and `experiment://{id}` are told
when they change, in both protocol eras the server speaks.

- 2026-07-28: MCPServer serves `subscriptions/listen` itself; this module publishes
  `ResourceUpdated(uri)` on the subscription bus the server was built with. The server
  delivers an event only to listeners that named that URI.
- 2025 (handshake era): `resources/subscribe` / `resources/unsubscribe` handlers (MCPServer
  registers none) keep each subscribed connection, weakly, and push
  `notifications/resources/updated` to it.

Runs finish in worker threads (the scheduler's) while the protocol lives on the event loop:
the notifier keeps the loop (taken in the server's lifespan and on each subscribe)
and schedules the notification there without waiting. A notification is a hint to re-read, never data: it carries only the URI.
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import mcp_types as types
from mcp.server import MCPServer
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated
from mcp.shared.exceptions import MCPError

log = logging.getLogger(__name__)

LEADERBOARD_URI = "autoresearch://leaderboard"
EXPERIMENT_URI = "experiment://{}"
MAX_LEGACY_SUBSCRIPTIONS = 10_000  # resources one server keeps subscribers for
MAX_SUBSCRIPTIONS_PER_CONNECTION = 100  # so that one connection cannot take them all
# What may be subscribed to: the leaderboard, or one experiment by its id.
SUBSCRIBABLE = re.compile(r"autoresearch://leaderboard|experiment://[1-9][0-9]{0,9}")


class ChangeNotifier:
    """Fan-out of 'this resource changed' to 2026 listeners and 2025 subscribers."""

    def __init__(self) -> None:
        self.bus = InMemorySubscriptionBus()
        self._legacy: dict[str, weakref.WeakSet[Connection]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def install(self, mcp: MCPServer) -> None:
        """Serve resources/subscribe and resources/unsubscribe on `mcp` (built with
        `subscriptions=self.bus` and `lifespan=self.lifespan`)."""
        # No public way to add a handler for a spec method in mcp 2.3.0: the lowlevel server's.
        lowlevel = mcp._lowlevel_server
        lowlevel.add_request_handler(
            "resources/subscribe", types.SubscribeRequestParams, self._on_subscribe
        )
        lowlevel.add_request_handler(
            "resources/unsubscribe", types.UnsubscribeRequestParams, self._on_unsubscribe
        )

    @asynccontextmanager
    async def lifespan(self, _server: Any) -> AsyncIterator[dict[str, Any]]:
        """The server's lifespan: remember its event loop, for runs finishing in threads."""
        self._loop = asyncio.get_running_loop()
        yield {}

    async def _on_subscribe(
        self, ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        self._loop = asyncio.get_running_loop()
        uri = str(params.uri)
        if not SUBSCRIBABLE.fullmatch(uri):
            raise MCPError(
                types.INVALID_PARAMS,
                f"{uri[:80]!r} cannot be subscribed to; subscribe to {LEADERBOARD_URI} or "
                "experiment://ID (an id from get_history)",
            )
        connection = ctx.session._connection
        mine = sum(1 for subscribers in self._legacy.values() if connection in subscribers)
        if uri not in self._legacy or connection not in self._legacy[uri]:
            if mine >= MAX_SUBSCRIPTIONS_PER_CONNECTION:
                raise MCPError(
                    types.INVALID_PARAMS,
                    f"this connection already holds {mine} subscriptions (the most one may hold); "
                    "unsubscribe from finished experiments first",
                )
            if uri not in self._legacy and len(self._legacy) >= MAX_LEGACY_SUBSCRIPTIONS:
                self._legacy = {u: s for u, s in self._legacy.items() if len(s)}
                if len(self._legacy) >= MAX_LEGACY_SUBSCRIPTIONS:
                    raise MCPError(
                        types.INVALID_PARAMS,
                        "the server holds as many subscribed resources as it keeps; try again "
                        "later, or use subscriptions/listen (protocol 2026-07-28)",
                    )
            self._legacy.setdefault(uri, weakref.WeakSet()).add(connection)
        return types.EmptyResult()

    async def _on_unsubscribe(
        self, ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        subscribers = self._legacy.get(str(params.uri))
        if subscribers is not None:
            subscribers.discard(ctx.session._connection)
        return types.EmptyResult()

    async def resource_updated(self, uri: str) -> None:
        """Tell every subscriber of `uri`, in both eras (on the event loop)."""
        await self.bus.publish(ResourceUpdated(uri=uri))
        for connection in list(self._legacy.get(uri, ())):
            await connection.send_resource_updated(uri)

    def legacy_subscribers(self, uri: str) -> int:
        return len(self._legacy.get(uri, ()))

    # ------------------------------------------------------------ from the lab's threads

    def on_run_finished(self, experiment_id: int) -> None:
        """A run finished or was cancelled: its page and the leaderboard may have changed."""
        self.changed(EXPERIMENT_URI.format(experiment_id), LEADERBOARD_URI)

    def on_run_started(self, experiment_id: int) -> None:
        self.changed(EXPERIMENT_URI.format(experiment_id))

    def changed(self, *uris: str) -> None:
        """Publish from any thread without waiting: scheduled on the server's event loop (none
        seen yet: nobody can be subscribed; closed: nobody is)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for uri in uris:
            try:
                loop.call_soon_threadsafe(self._publish, uri)
            except RuntimeError:  # the loop closed meanwhile
                return

    def _publish(self, uri: str) -> None:
        task = asyncio.ensure_future(self.resource_updated(uri))
        self._pending.add(task)  # a reference until it is done (asyncio keeps only weak ones)
        task.add_done_callback(self._pending.discard)
