"""The HTTP server: FastAPI with the dashboard, the JSON API, and MCP (streamable HTTP) at /mcp.

One process, one Lab. MCP requests need a bearer token with the `agent` role (no token: 401);
the dashboard and the JSON API accept any valid token (a `viewer` token is enough), as a
bearer header or once as `?token=` (then kept in an HttpOnly cookie). `--no-auth` is
refused unless the server listens on loopback only.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from mcp.server.auth.settings import AuthSettings
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import AnyHttpUrl

from server.app import build_server
from server.auth import StoreTokenVerifier, lookup_token
from server.lab import Lab

COOKIE = "autoresearch_token"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
) -> FastAPI:
    """The whole HTTP surface over `lab`."""
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
    allowed_hosts = [
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        "127.0.0.1",
        "localhost",
        f"{host}:{port}",
    ]
    mcp_app = mcp.streamable_http_app(
        streamable_http_path="/mcp",
        transport_security=TransportSecuritySettings(
            enable_dns_rebinding_protection=is_loopback(host),
            allowed_hosts=allowed_hosts,
            allowed_origins=[base_url, f"http://localhost:{port}"],
        ),
        host=host,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with mcp.session_manager.run():
            yield

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

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, Any]:
        return {"ok": True, "isolation": lab.isolation.value, "device": lab.device}

    from server import dashboard

    dashboard.register(app, lab, app.state.access)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )

    app.mount("/", mcp_app)  # last: a mount at "/" swallows the routes after it
    return app
