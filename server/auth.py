"""Bearer tokens: each maps to an agent name and a role (`agent` may use the tools, `viewer` may
only read the dashboard). Only the sha256 of a token is stored."""

from __future__ import annotations

import hashlib
import secrets

from mcp.server.auth.provider import AccessToken

from server.record import RESERVED_AGENT_NAMES
from server.store import Store

ROLES = ("agent", "viewer")
TOKEN_PREFIX = "ar_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(store: Store, agent: str, role: str = "agent") -> str:
    """Create a token for `agent` and return it (shown once; only its hash is kept)."""
    if role not in ROLES:
        raise ValueError(f"role {role!r} is unknown; use one of {', '.join(ROLES)}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(24)
    store.add_token(hash_token(token), agent, role)
    return token


def lookup_token(store: Store, token: str) -> AccessToken | None:
    """The access a token grants, or None for an unknown or revoked token."""
    if not token or len(token) > 200:
        return None
    row = store.token(hash_token(token))
    if row is None or row["agent"] in RESERVED_AGENT_NAMES:  # issued before they were refused
        return None
    scopes = ["agent", "viewer"] if row["role"] == "agent" else ["viewer"]
    return AccessToken(token=token, client_id=row["agent"], scopes=scopes)


class StoreTokenVerifier:
    """The MCP SDK's TokenVerifier over the store's tokens table."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def verify_token(self, token: str) -> AccessToken | None:
        return lookup_token(self.store, token)
