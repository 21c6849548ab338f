"""Limits on what a client may send, checked on the raw bytes before the MCP SDK parses them.

JSON nested deeper than the SDK's parser allows (~200 levels) used to fail inside the SDK with
an error that carries no request id (over HTTP: a bare "Parse error" with `id: null`; over
stdio: no answer at all, so the client waited forever). Less deep nesting still reached
pydantic and the tools. Every incoming JSON-RPC message is therefore measured first, in linear
time and without recursion, and a message nested deeper than MAX_JSON_DEPTH is answered with a
JSON-RPC error that carries the request's own id and says the maximum.

- `json_nesting_depth` / `too_deep_error`: the measurement and the answer (transport-agnostic);
- `serve_stdio`: the stdio transport with every line measured before the SDK sees it.
The HTTP side (an ASGI gate in front of the session manager) is in server/web.py.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import anyio
import numpy as np
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp.types import INVALID_REQUEST, ErrorData, JSONRPCError

# The deepest legitimate message is an initialize or a tool call: envelope, params, arguments,
# and a list of values (about 6 levels). 64 leaves room for any client's capabilities.
MAX_JSON_DEPTH = 64

_BRACKET_STEP = np.zeros(256, dtype=np.int8)
_BRACKET_STEP[[ord("["), ord("{")]] = 1
_BRACKET_STEP[[ord("]"), ord("}")]] = -1
_ID_MEMBER = re.compile(rb'"id"\s*:\s*(-?\d{1,30}|"(?:[^"\\]|\\.){0,256}"|null)', re.DOTALL)


def _depth_profile(body: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per byte: the nesting depth before it, after it, and whether it opens or lies inside a string."""
    data = np.frombuffer(body, dtype=np.uint8)
    positions = np.arange(data.size, dtype=np.int32)
    backslash = data == ord("\\")
    # A quote is escaped when an odd number of backslashes stands right before it.
    last_plain = np.maximum.accumulate(np.where(backslash, np.int32(-1), positions))
    plain_before = np.concatenate((np.array([-1], dtype=np.int32), last_plain[:-1]))
    real_quote = (data == ord('"')) & ((positions - 1 - plain_before) % 2 == 0)
    in_string = np.cumsum(real_quote, dtype=np.int32) % 2 == 1  # the closing quote counts as out
    step = _BRACKET_STEP[data].astype(np.int32)
    step[in_string] = 0
    depth_after = np.cumsum(step, dtype=np.int32)
    return depth_after - step, depth_after, in_string


def json_nesting_depth(body: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest (brackets inside strings do not count).

    Linear in the size of the text, vectorised, without recursion.
    """
    if not body:
        return 0
    return int(_depth_profile(body)[1].max(initial=0))


def top_level_id(body: bytes) -> Any:
    """The `id` member of the top-level JSON object (None if absent), found without parsing the rest."""
    if not body:
        return None
    depth_before, _, in_string = _depth_profile(body)
    for match in _ID_MEMBER.finditer(body):
        start = match.start()
        opens_a_string = in_string[start] and (start == 0 or not in_string[start - 1])
        if opens_a_string and depth_before[start] == 1:
            try:
                value = json.loads(match.group(1))
            except ValueError:
                return None
            return value if isinstance(value, int | str) and not isinstance(value, bool) else None
    return None


def too_deep_error(body: bytes) -> JSONRPCError | None:
    """The JSON-RPC error that answers a message nested deeper than MAX_JSON_DEPTH, else None."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return None  # too few brackets to nest that deep: no scan
    depth = json_nesting_depth(body)
    if depth <= MAX_JSON_DEPTH:
        return None
    return JSONRPCError(
        jsonrpc="2.0",
        id=top_level_id(body),
        error=ErrorData(
            code=INVALID_REQUEST,
            message=(
                f"the request nests JSON arrays/objects {depth} levels deep; the maximum depth is "
                f"{MAX_JSON_DEPTH}. Tool arguments are flat (strings, numbers, lists of them): "
                "send them without extra nesting"
            ),
        ),
    )


class _DepthCheckedLines:
    """The stdio input as lines, minus the messages nested too deep (those are answered here)."""

    def __init__(self, lines: Any) -> None:
        self.lines = lines
        self.replies: Any = None
        self.ready = anyio.Event()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._checked()

    async def _checked(self) -> AsyncIterator[str]:
        async for line in self.lines:
            refusal = too_deep_error(line.encode("utf-8", errors="replace"))
            if refusal is None:
                yield line
                continue
            await self.ready.wait()
            if refusal.id is not None:  # a notification gets no answer
                await self.replies.send(SessionMessage(refusal))


async def serve_stdio(server: Any) -> None:
    """Run an MCPServer over stdin/stdout, as `server.run("stdio")` does, with the depth check.

    The SDK claims fd 0 itself only when it opens stdin; here stdin is opened by us, so fd 0 is
    pointed at the null device the same way: tools and their children never read the protocol.
    """
    lowlevel = getattr(server, "_lowlevel_server", None)
    if lowlevel is None or not hasattr(lowlevel, "create_initialization_options"):
        raise RuntimeError(
            "this mcp SDK has no MCPServer._lowlevel_server; serve_stdio needs updating to it"
        )
    stdin_fd = os.dup(0)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.close(null_fd)
    text = io.TextIOWrapper(os.fdopen(stdin_fd, "rb"), encoding="utf-8", errors="replace")
    lines = _DepthCheckedLines(anyio.wrap_file(text))
    try:
        async with stdio_server(stdin=lines) as (read_stream, write_stream):  # type: ignore[arg-type]
            lines.replies = write_stream
            lines.ready.set()
            await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
    finally:
        text.close()
