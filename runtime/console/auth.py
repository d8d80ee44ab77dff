"""Who is looking at the console: an API key exchanged for a signed session cookie.

A person signs in by posting a key (never in a URL). A tenant's key gives a
session over that tenant's rows only; the operator's key (``operator_key``) one
over every tenant. The cookie is httpOnly and SameSite=Strict, and carries no
key: only the key's id (or the operator's fingerprint), a nonce and an expiry,
signed with HMAC-SHA256 by a secret kept in the data dir (``console.secret``).
Every request checks the key again, so revoking it ends its sessions at once.

Every form carries a CSRF token bound to the session's nonce (the sign-in form:
to a nonce in its own short-lived cookie), checked on every POST.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response

from runtime.tenants import KEY_PREFIX, key_hash
from scheduler.models import ApiKey
from scheduler.store import Store

SESSION_COOKIE = "cloudskills_console"
LOGIN_COOKIE = "cloudskills_console_login"
SESSION_S = 12 * 3600
OPERATOR = "operator"


@dataclass(frozen=True)
class Viewer:
    """A signed-in session: a tenant (and the key's agent), or the operator (``tenant_id`` None)."""

    tenant_id: str | None
    agent: str | None
    nonce: str

    @property
    def operator(self) -> bool:
        return self.tenant_id is None


def load_secret(home: Path) -> bytes:
    """The data dir's signing secret, made on first use (readable by its owner only)."""
    path = home / "console.secret"
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        secret = secrets.token_bytes(32)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secret.hex())
        return secret


class Sessions:
    def __init__(self, store: Store, home: Path, operator_key: str | None) -> None:
        self.store = store
        self.secret = load_secret(home)
        self.operator_key = operator_key

    # -- signing --------------------------------------------------------------

    def _sign(self, text: str) -> str:
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()

    def _operator_mark(self) -> str:
        assert self.operator_key is not None
        return self._sign(f"operator:{self.operator_key}")[:32]

    @staticmethod
    def fresh_nonce() -> str:
        return secrets.token_urlsafe(16)

    def csrf_token(self, nonce: str, purpose: str = "session") -> str:
        return self._sign(f"csrf:{purpose}:{nonce}")

    def csrf_ok(self, nonce: str, token: str, purpose: str = "session") -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(nonce, purpose), token)

    # -- sign-in ---------------------------------------------------------------

    def sign_in(self, key: str) -> str | None:
        """A session cookie's value for a live key, or None for any other."""
        key = key.strip()
        if self.operator_key and hmac.compare_digest(key.encode(), self.operator_key.encode()):
            subject = f"{OPERATOR}:{self._operator_mark()}"
        elif key.startswith(KEY_PREFIX):
            with self.store.transaction() as session:
                row = session.execute(
                    select(ApiKey.id, ApiKey.revoked_at).where(ApiKey.key_hash == key_hash(key))
                ).one_or_none()
            if row is None or row.revoked_at is not None:
                return None
            subject = f"key:{row.id}"
        else:
            return None
        payload = json.dumps({"s": subject, "n": secrets.token_urlsafe(16), "e": int(time.time()) + SESSION_S})
        body = base64.urlsafe_b64encode(payload.encode()).decode()
        return f"{body}.{self._sign(body)}"

    def viewer(self, request: Request) -> Viewer | None:
        """The session the request's cookie stands for, if it is valid and its key still live."""
        cookie = request.cookies.get(SESSION_COOKIE, "")
        body, _, signature = cookie.partition(".")
        if not body or not hmac.compare_digest(self._sign(body), signature):
            return None
        try:
            payload = json.loads(base64.urlsafe_b64decode(body))
            subject, nonce, expires = str(payload["s"]), str(payload["n"]), int(payload["e"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires < time.time():
            return None
        kind, _, ident = subject.partition(":")
        if kind == OPERATOR:
            live = self.operator_key is not None and hmac.compare_digest(ident, self._operator_mark())
            return Viewer(None, None, nonce) if live else None
        with self.store.reading() as session:  # every console request's: never waits for a writer
            row = session.execute(
                select(ApiKey.tenant_id, ApiKey.agent, ApiKey.revoked_at).where(ApiKey.id == ident)
            ).one_or_none()
        if row is None or row.revoked_at is not None:
            return None
        return Viewer(row.tenant_id, row.agent, nonce)

    # -- cookies ---------------------------------------------------------------

    @staticmethod
    def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/console",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    @staticmethod
    def clear_cookie(response: Response, name: str) -> None:
        response.delete_cookie(name, path="/console", httponly=True, samesite="strict")
