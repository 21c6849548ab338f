"""The HTTP server: FastAPI with the dashboard, the JSON API, and MCP (streamable HTTP) at /mcp.

One process, one Lab. MCP requests need a bearer token with the `agent` role (no token: 401);
the dashboard and the JSON API accept any valid token (a `viewer` token is enough), as a
bearer header or once as `?token=` (then kept in an HttpOnly cookie). `--no-auth` is
refused unless the server listens on loopback only.

Before any route runs (dashboard, JSON API, downloads, /healthz, /mcp), in both auth modes:

- `HostAndOriginGuard`: the Host header must name this server: a loopback name (127.0.0.1,
  localhost, [::1]), the address it was started on, for a wildcard bind the address the
  connection arrived at or the machine's own name, or a name the operator allowed
  (--allowed-host). Else 421: a page on a foreign name that DNS-rebinds to this machine
  reaches nothing. A browser's Origin, when sent, must be one of those names on this port
  (or an allowed name); else 403.
- `McpGate`, in front of the MCP session manager (after the bearer check): a message nested
  deeper than server.request_limits.MAX_JSON_DEPTH gets a JSON-RPC error with its own id; one
  token may hold at most `mcp_sessions_per_token` live sessions (the next is refused with
  429 and what to do); sessions with no request in flight expire after
  `mcp_session_idle_seconds` (the SDK's idle timeout).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.settings import AuthSettings
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE, TransportSecuritySettings
from mcp.types import INVALID_REQUEST, ErrorData, JSONRPCError
from pydantic import AnyHttpUrl
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import dashboard, presentation
from server.app import build_server
from server.auth import StoreTokenVerifier, lookup_token
from server.cache_warmer import CacheWarmer, Demand, WarmJob
from server.dashboard.data import chart_json
from server.lab import Lab
from server.models import LISTED_AGENTS
from server.request_limits import too_deep_error
from server.timings import ToolTimer, ToolTimings

COOKIE = "autoresearch_token"
MCP_PATH = "/mcp"
DEFAULT_MCP_SESSIONS_PER_TOKEN = 8
DEFAULT_MCP_SESSION_IDLE_SECONDS = 600.0
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_host(value: str) -> tuple[str, int | None] | None:
    """`name[:port]` or `[v6][:port]` -> (lower-case name without brackets, port), None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else ""
    elif value.count(":") == 1:
        name, port_text = value.split(":")
    else:
        name, port_text = value, ""
    if not name or any(c in name for c in "/@?#\\ \t"):
        return None
    if port_text == "":
        return name, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return name, int(port_text)


def parse_allowed_host(entry: str) -> tuple[str, int | None]:
    """An operator's --allowed-host entry: NAME or NAME:PORT (no scheme, no path)."""
    parsed = _split_host(entry) if "://" not in entry else None
    if parsed is None:
        raise ValueError(
            f"--allowed-host {entry!r} is not a host name; give NAME or NAME:PORT, "
            "e.g. --allowed-host lab.example.org or --allowed-host 10.0.0.5:8000"
        )
    return parsed


@dataclass(frozen=True)
class HostPolicy:
    """Which Host and Origin headers name this server."""

    bind_host: str
    port: int
    extra: tuple[tuple[str, int | None], ...] = ()
    own_names: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def for_server(cls, bind_host: str, port: int, allowed_hosts: Iterable[str] = ()) -> HostPolicy:
        names = {*LOOPBACK_NAMES}
        bind = bind_host.strip("[]").lower()
        if bind in WILDCARD_BINDS:
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        else:
            names.add(bind)
        extra = tuple(parse_allowed_host(entry) for entry in allowed_hosts)
        return cls(bind, port, extra, frozenset(names))

    def names(self) -> list[str]:
        return sorted(self.own_names | {name for name, _ in self.extra})

    def host_allowed(self, host: str, local_address: str | None) -> bool:
        parsed = _split_host(host)
        if parsed is None:
            return False
        name = parsed[0]  # the port is the one the connection reached; only the name can be foreign
        if name in self.own_names:
            return True
        if self.bind_host in WILDCARD_BINDS and local_address and name == local_address.lower():
            return (
                True  # the address this connection arrived at: an IP literal, not a name to rebind
            )
        return any(name == allowed for allowed, _ in self.extra)

    def origin_allowed(self, origin: str, local_address: str | None) -> bool:
        try:
            parts = urlsplit(origin)
            name, port = (parts.hostname or "").lower(), parts.port
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not name:
            return False
        port = port or (443 if parts.scheme == "https" else 80)
        if port == self.port and (
            name in self.own_names
            or (
                self.bind_host in WILDCARD_BINDS and local_address and name == local_address.lower()
            )
        ):
            return True
        return any(name == n and (p is None or port == p) for n, p in self.extra)

    def transport_security(self) -> TransportSecuritySettings:
        """The MCP SDK's own Host/Origin check, never stricter than HostAndOriginGuard.

        It cannot express the wildcard bind's own-address rule, so it is on for named binds only.
        """
        hosts, origins = [], []
        for name in self.names():
            shown = f"[{name}]" if ":" in name else name
            hosts += [shown, f"{shown}:*"]
            origins += [
                f"{scheme}://{shown}{port}" for scheme in ("http", "https") for port in ("", ":*")
            ]
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=self.bind_host not in WILDCARD_BINDS,
            allowed_hosts=hosts,
            allowed_origins=origins,
        )


async def _send_json(send: Send, status: int, body: bytes) -> None:
    """One complete JSON response on a raw ASGI `send`."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _refuse(scope: Scope, send: Send, status: int, message: str) -> None:
    """A refusal before any route: JSON-RPC shaped on /mcp, `{"detail": ...}` elsewhere."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    if scope.get("path", "").startswith(MCP_PATH):
        payload = JSONRPCError(
            jsonrpc="2.0", id=None, error=ErrorData(code=INVALID_REQUEST, message=message)
        ).model_dump(by_alias=True, exclude_unset=True)
    else:
        payload = {"detail": message}
    body = json.dumps(payload).encode()
    await _send_json(send, status, body)


class HostAndOriginGuard:
    """ASGI middleware: refuse a foreign Host (421) or a foreign browser Origin (403) on every route."""

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        host = headers.get(b"host", b"").decode("latin-1")
        local = (scope.get("server") or (None, None))[0]
        shown = self.policy.bind_host
        if shown in WILDCARD_BINDS or is_loopback(shown):
            shown = "127.0.0.1"
        usable = f"http://{f'[{shown}]' if ':' in shown else shown}:{self.policy.port}/"
        if not self.policy.host_allowed(host, local):
            await _refuse(
                scope,
                send,
                421,
                f"Host {host!r} is not an address of this server (it answers to "
                f"{', '.join(self.policy.names())}); connect to {usable}, or start the server "
                "with --allowed-host NAME for a name of your own",
            )
            return
        origin = headers.get(b"origin")
        if origin is not None and not self.policy.origin_allowed(origin.decode("latin-1"), local):
            await _refuse(
                scope,
                send,
                403,
                f"Origin {origin.decode('latin-1')!r} is not this server; a page from another "
                f"site may not use it. Open the dashboard at {usable} itself",
            )
            return
        await self.app(scope, receive, send)


@dataclass
class _SessionBook:
    """Live MCP sessions per credential, and opening requests not answered yet."""

    owner: dict[str, str] = field(default_factory=dict)  # session id -> credential
    opening: dict[str, int] = field(default_factory=dict)  # credential -> requests in flight

    def live(self, credential: str, live_ids: set[str]) -> int:
        for session_id in [s for s in self.owner if s not in live_ids]:
            del self.owner[session_id]  # ended: deleted, idle-expired or crashed
        held = sum(1 for owner in self.owner.values() if owner == credential)
        return held + self.opening.get(credential, 0)


class McpGate:
    """ASGI wrapper around the MCP session manager (after the bearer check): depth and session caps."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        live_session_ids: Callable[[], set[str]],
        sessions_per_token: int,
        idle_seconds: float,
        max_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_SIZE,
    ) -> None:
        self.app = app
        self.live_session_ids = live_session_ids
        self.sessions_per_token = sessions_per_token
        self.idle_seconds = idle_seconds
        self.max_body_bytes = max_body_bytes
        self.book = _SessionBook()

    @staticmethod
    def credential(scope: Scope) -> str:
        """Whose sessions these are: a hash of the bearer token, or one shared key with --no-auth."""
        user = scope.get("user")
        if isinstance(user, AuthenticatedUser):
            return hashlib.sha256(user.access_token.token.encode()).hexdigest()
        return "no-auth"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("method") == "POST":
            replayed = await self._checked_body(scope, receive, send)
            if replayed is None:
                return
            receive = replayed
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if b"mcp-session-id" in headers or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        await self._open_session(scope, receive, send)

    async def _checked_body(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """Read the body (up to the SDK's size limit) and refuse it if it nests too deep.

        Returns a `receive` that replays the body, or None when the request was answered here.
        """
        chunks: list[bytes] = []
        size = 0
        more = True
        trailing: list[Message] = []
        while more and size <= self.max_body_bytes:
            message = await receive()
            if message["type"] != "http.request":
                trailing.append(message)
                break
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if not more and size <= self.max_body_bytes:  # a larger body is the SDK's 413
            refusal = (
                too_deep_error(body)
                if size < 65_536
                else await anyio.to_thread.run_sync(too_deep_error, body)
            )
            if refusal is not None:
                payload = refusal.model_dump_json(by_alias=True, exclude_unset=True).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 400,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": payload})
                return None
        replay: list[Message] = [{"type": "http.request", "body": body, "more_body": more}]
        replay += trailing

        async def replayed() -> Message:
            return replay.pop(0) if replay else await receive()

        return replayed

    async def _open_session(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A request that opens a session: admitted while its credential holds fewer than the cap."""
        credential = self.credential(scope)
        held = self.book.live(credential, self.live_session_ids())
        if held >= self.sessions_per_token:
            await _refuse_json_rpc(
                send,
                429,
                f"this token already holds {held} open MCP sessions, the most one token may hold "
                f"(--mcp-sessions-per-token {self.sessions_per_token}); close one (a client "
                "closes its session with DELETE /mcp when it disconnects) or wait: a session "
                f"with no request for {self.idle_seconds:g} s expires",
            )
            return
        self.book.opening[credential] = self.book.opening.get(credential, 0) + 1
        created: list[str] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                for name, value in message.get("headers", []):
                    if name.lower() == b"mcp-session-id":
                        created.append(value.decode("latin-1"))
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self.book.opening[credential] -= 1
            if not self.book.opening[credential]:
                del self.book.opening[credential]
            for session_id in created:
                self.book.owner[session_id] = credential


async def _refuse_json_rpc(send: Send, status: int, message: str) -> None:
    body = (
        JSONRPCError(jsonrpc="2.0", id=None, error=ErrorData(code=INVALID_REQUEST, message=message))
        .model_dump_json(by_alias=True, exclude_unset=True)
        .encode()
    )
    await _send_json(send, status, body)


class Access:
    """Who is asking, for the dashboard and the JSON API."""

    def __init__(self, lab: Lab, auth: bool) -> None:
        self.lab = lab
        self.auth = auth

    def __call__(self, request: Request) -> str:
        if not self.auth:
            return "local"
        token = None
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            token = header[7:].strip()
        token = token or request.query_params.get("token") or request.cookies.get(COOKIE)
        access = lookup_token(self.lab.store, token or "")
        if access is None:
            raise HTTPException(
                status_code=401,
                detail="a valid token is required: Authorization: Bearer <token> "
                "or ?token=<token> (autoresearch-mcp tokens add NAME --role viewer)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return access.client_id


def build_app(
    lab: Lab,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    auth: bool = True,
    default_agent: str = "local",
    allowed_hosts: Sequence[str] = (),
    mcp_sessions_per_token: int = DEFAULT_MCP_SESSIONS_PER_TOKEN,
    mcp_session_idle_seconds: float = DEFAULT_MCP_SESSION_IDLE_SECONDS,
) -> FastAPI:
    """The whole HTTP surface over `lab` (ValueError, with what to pass instead, on bad settings)."""
    if mcp_sessions_per_token < 1:
        raise ValueError(
            f"--mcp-sessions-per-token {mcp_sessions_per_token} must be at least 1 (default 8)"
        )
    if not 0 < mcp_session_idle_seconds < float("inf"):
        raise ValueError(
            f"--mcp-session-idle {mcp_session_idle_seconds} must be a positive number of seconds "
            f"(default {DEFAULT_MCP_SESSION_IDLE_SECONDS:g})"
        )
    policy = HostPolicy.for_server(host, port, allowed_hosts)
    if not auth and not is_loopback(host):
        raise ValueError(
            f"--no-auth is only allowed on a loopback address, not {host}; create tokens instead"
        )
    base_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    if auth:
        mcp = build_server(
            lab,
            default_agent=None,
            token_verifier=StoreTokenVerifier(lab.store),
            auth=AuthSettings(
                issuer_url=AnyHttpUrl(base_url), resource_server_url=None, required_scopes=["agent"]
            ),
        )
    else:
        mcp = build_server(lab, default_agent=default_agent)
    mcp_app = mcp.streamable_http_app(
        streamable_http_path=MCP_PATH,
        transport_security=policy.transport_security(),
        session_idle_timeout=mcp_session_idle_seconds,
        host=host,
    )
    manager = mcp.session_manager
    sessions = getattr(manager, "_server_instances", None)
    if not isinstance(sessions, dict) or not callable(getattr(manager, "asgi_app", None)):
        raise RuntimeError(
            "this mcp SDK's StreamableHTTPSessionManager has no _server_instances/asgi_app; "
            "McpGate (per-token session cap) must be adapted to it"
        )
    timings = ToolTimings()
    manager.asgi_app = McpGate(  # type: ignore[assignment]
        ToolTimer(manager.asgi_app, timings, mcp.list_tools),
        live_session_ids=lambda: set(sessions),
        sessions_per_token=mcp_sessions_per_token,
        idle_seconds=mcp_session_idle_seconds,
        max_body_bytes=manager.max_request_body_size,
    )

    chart_readers = Demand()
    warmer = CacheWarmer(
        lab.store,
        [
            WarmJob(
                "leaderboard", lambda: presentation.leaderboard(lab, agents_listed=LISTED_AGENTS)
            ),
            WarmJob("chart", lambda: chart_json(lab), chart_readers.recent),
        ],
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        warmer.start()
        try:
            async with mcp.session_manager.run():
                yield
        finally:
            warmer.stop()

    app = FastAPI(
        title="autoresearch-mcp",
        version="0.1.0",
        lifespan=lifespan,
        description="Dashboard and JSON API of an autoresearch MCP server.",
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN; /openapi.json stays
        redoc_url=None,
    )
    app.state.lab = lab
    app.state.access = Access(lab, auth)
    app.state.timings = timings

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, Any]:
        return {"ok": True, "isolation": lab.isolation.value, "device": lab.device}

    dashboard.register(app, lab, app.state.access, timings, chart_readers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )

    app.mount("/", mcp_app)  # last: a mount at "/" swallows the routes after it
    app.add_middleware(HostAndOriginGuard, policy=policy)  # outermost: before every route
    return app
