"""How long the server takes to answer each MCP tool call, as the server measures it: from the
moment the request reaches the MCP endpoint (after the bearer check) to its last byte sent.

With many agents on one server, the latency a client reports mixes the server's time with
the client's own (the Python SDK validates every structured result against the tool's output
schema: ~20 ms of client CPU for a get_history page) and the client machine's queueing. These
figures are the server's share. `GET /api/timings` gives each tool's count, p50, p95 and max
over the newest calls (optionally only those since a time), for the operator, the dashboard's
readers and bench/agents.py.

A tool name is agent-written text: only the server's own tool names are kept, anything else is
counted as "other", so the table stays bounded whatever a client sends.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Calls kept per tool (the newest); percentiles are over these.
KEPT_PER_TOOL = 5_000
#: A tools/call body is parsed (for the tool's name) up to this size.
MAX_PARSED_BODY = 65_536
OTHER = "other"


class ToolTiming(BaseModel):
    """One tool's server-side response times over the calls kept."""

    tool: str
    calls: int
    p50_ms: float
    p95_ms: float
    max_ms: float


class Timings(BaseModel):
    """Server-side response times of MCP tool calls, per tool and for all of them."""

    since: float | None  # unix time the figures start at (None: the newest calls kept)
    kept_per_tool: int
    tools: list[ToolTiming]
    all: ToolTiming | None


def tool_call_name(body: bytes) -> str | None:
    """The tool a JSON-RPC request body calls (`tools/call`), or None for any other request."""
    try:
        message = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(message, dict) or message.get("method") != "tools/call":
        return None
    params = message.get("params")
    name = params.get("name") if isinstance(params, dict) else None
    return name if isinstance(name, str) else OTHER


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _timing(tool: str, seconds: list[float]) -> ToolTiming:
    ordered = sorted(seconds)
    return ToolTiming(
        tool=tool,
        calls=len(ordered),
        p50_ms=round(1000 * _quantile(ordered, 0.5), 2),
        p95_ms=round(1000 * _quantile(ordered, 0.95), 2),
        max_ms=round(1000 * ordered[-1], 2),
    )


class ToolTimings:
    """The newest KEPT_PER_TOOL response times of each known tool (thread-safe)."""

    def __init__(self, known_tools: Iterable[str] | None = None) -> None:
        # The server's tool names (None: not read yet; ToolTimer reads them on its first call).
        self.known = None if known_tools is None else frozenset(known_tools)
        self._lock = threading.Lock()
        self._calls: dict[str, deque[tuple[float, float]]] = {}

    def record(self, tool: str, began: float, seconds: float) -> None:
        """One answered call of `tool` that began at unix time `began` and took `seconds`."""
        name = tool if self.known is not None and tool in self.known else OTHER
        with self._lock:
            calls = self._calls.get(name)
            if calls is None:
                calls = self._calls[name] = deque(maxlen=KEPT_PER_TOOL)
            calls.append((began, seconds))

    def summary(self, since: float | None = None) -> Timings:
        """Each tool's figures over its kept calls that began at or after `since`."""
        with self._lock:
            kept = {name: list(calls) for name, calls in self._calls.items()}
        tools, every = [], []
        for name in sorted(kept):
            seconds = [s for began, s in kept[name] if since is None or began >= since]
            if seconds:
                tools.append(_timing(name, seconds))
                every += seconds
        return Timings(
            since=since,
            kept_per_tool=KEPT_PER_TOOL,
            tools=tools,
            all=_timing("all", every) if every else None,
        )


class ToolTimer:
    """ASGI wrapper around the MCP endpoint: times each POST that calls a tool, from its arrival
    to the last byte of its answer (a streamed answer included), into `timings`.

    `list_tools` (the MCP server's) names the known tools on the first call. Bodies over
    MAX_PARSED_BODY bytes are not parsed (a tool call's arguments are small) and not timed.
    """

    def __init__(
        self, app: ASGIApp, timings: ToolTimings, list_tools: Callable[[], Awaitable[list[Any]]]
    ) -> None:
        self.app = app
        self.timings = timings
        self.list_tools = list_tools

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        began, clock = time.time(), time.perf_counter()
        messages: list[Message] = []
        size, more = 0, True
        while more and size <= MAX_PARSED_BODY:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        tool = None
        if not more and size <= MAX_PARSED_BODY:
            tool = tool_call_name(b"".join(m.get("body", b"") for m in messages))

        async def replayed() -> Message:
            return messages.pop(0) if messages else await receive()

        if tool is None:
            await self.app(scope, replayed, send)
            return
        if self.timings.known is None:
            self.timings.known = frozenset(t.name for t in await self.list_tools())

        async def timed(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.timings.record(tool, began, time.perf_counter() - clock)

        await self.app(scope, replayed, timed)
