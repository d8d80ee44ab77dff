"""Bearer API keys over HTTP: one verification per request, shared by /mcp and /v1.

The MCP SDK's authentication middleware wraps the whole HTTP app, so it verifies the
key of every request, /v1's included; what it found (an ``AccessToken`` standing for
the key's tenant and agent) is in the request's scope for the route to read, not
looked up in the store a second time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcp.server.auth.provider import AccessToken, TokenVerifier

from runtime.app import App
from runtime.tenants import Caller, caller_of_key

AGENT_CLAIM = "agent"


class KeyVerifier(TokenVerifier):
    """Bearer tokens are our API keys: a live key stands for its tenant (and its agent)."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def verify_token(self, token: str) -> AccessToken | None:
        caller = caller_of_key(self.app.store, token)
        if caller is None:
            return None
        return AccessToken(
            token=token,
            client_id=caller.tenant_id,
            scopes=[],
            subject=caller.tenant_id,
            claims={AGENT_CLAIM: caller.agent},
        )


def caller_of_token(token: AccessToken) -> Caller:
    agent = (token.claims or {}).get(AGENT_CLAIM)
    return Caller(token.client_id, agent if isinstance(agent, str) else None)


def verified_caller(scope: Mapping[str, Any]) -> Caller | None:
    """The caller the middleware verified this request's key as; None if it found no live key
    (or no middleware ran: /v1 is mounted only inside the MCP app, so that fails closed)."""
    token = getattr(scope.get("user"), "access_token", None)
    return caller_of_token(token) if isinstance(token, AccessToken) else None
