"""Demo credentials, the tokens this emulator issued, and the API's credential check."""

from __future__ import annotations

import base64
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

logger = logging.getLogger(__name__)

DEMO_TOKEN = "demo-token"
DEMO_CLIENT_ID = "rayfs-demo"
DEMO_CLIENT_SECRET = "demo-secret"

# Authorization codes are single-use and short-lived, as in AWS Cognito.
CODE_LIFETIME_S = 300
ISSUER = "rayfs-emulator"


@dataclass
class PendingCode:
    client_id: str
    redirect_uri: str
    code_challenge: str | None
    code_challenge_method: str
    expires_at: float


class TokenRegistry:
    """Access tokens, refresh tokens and authorization codes issued by this emulator.

    Times are `time.monotonic()` seconds. Everything lives in memory, so a
    restart signs every OAuth user out (the demo token keeps working).
    """

    def __init__(self) -> None:
        self._access: dict[str, float] = {}
        self._refresh: dict[str, str] = {}
        self._codes: dict[str, PendingCode] = {}

    def is_valid_access_token(self, token: str) -> bool:
        if hmac.compare_digest(token, DEMO_TOKEN):
            return True
        expires_at = self._access.get(token)
        if expires_at is None:
            return False
        if time.monotonic() >= expires_at:
            del self._access[token]
            return False
        return True

    def add_code(self, client_id: str, redirect_uri: str, challenge: str | None, method: str) -> str:
        self._sweep()
        code = secrets.token_urlsafe(24)
        self._codes[code] = PendingCode(client_id, redirect_uri, challenge, method, time.monotonic() + CODE_LIFETIME_S)
        return code

    def take_code(self, code: str) -> PendingCode | None:
        pending = self._codes.pop(code, None)
        if pending is None or time.monotonic() >= pending.expires_at:
            return None
        return pending

    def issue(self, client_id: str, lifetime_s: float, refresh_token: str | None = None) -> dict[str, object]:
        """Issue an access token (and a refresh token unless one is being reused)."""
        self._sweep()
        access_token = secrets.token_urlsafe(32)
        self._access[access_token] = time.monotonic() + lifetime_s
        if refresh_token is None:
            refresh_token = secrets.token_urlsafe(48)
            self._refresh[refresh_token] = client_id

        return {
            "access_token": access_token,
            "id_token": _id_token(client_id, lifetime_s),
            "refresh_token": refresh_token,
            "token_type": "Bearer",
            "expires_in": int(lifetime_s),
        }

    def refresh_client(self, refresh_token: str) -> str | None:
        return self._refresh.get(refresh_token)

    def _sweep(self) -> None:
        now = time.monotonic()
        for token in [token for token, expires_at in self._access.items() if expires_at <= now]:
            del self._access[token]
        for code in [code for code, pending in self._codes.items() if pending.expires_at <= now]:
            del self._codes[code]


def base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _id_token(client_id: str, lifetime_s: float) -> str:
    """Return an unsigned JWT ("alg": "none") with the claims a Cognito ID token has."""
    now = int(time.time())
    header = {"alg": "none", "typ": "JWT"}
    claims = {
        "iss": ISSUER,
        "sub": "00000000-0000-4000-8000-000000000001",
        "aud": client_id,
        "token_use": "id",
        "email": "demo@example.com",
        "name": "Demo User",
        "auth_time": now,
        "iat": now,
        "exp": now + int(lifetime_s),
    }
    parts = [base64url(json.dumps(part, separators=(",", ":")).encode("utf-8")) for part in (header, claims)]
    return ".".join(parts) + "."


def request_is_authorized(request: web.Request, registry: TokenRegistry) -> bool:
    """Check the API credentials of a request.

    The token may come in `Authorization` (bare or after "Bearer ") or in a
    `token` header, because the vendor's pages disagree on which one. An
    `x-rayteams-client-id` header, when present, must name the demo client.
    """
    client_id = request.headers.get("x-rayteams-client-id")
    if client_id is not None and client_id != DEMO_CLIENT_ID:
        return False

    candidates = []
    authorization = request.headers.get("Authorization")
    if authorization:
        scheme, _, rest = authorization.strip().partition(" ")
        candidates.append(rest.strip() if scheme.lower() == "bearer" and rest else authorization.strip())
    token_header = request.headers.get("token")
    if token_header:
        candidates.append(token_header.strip())

    return any(registry.is_valid_access_token(candidate) for candidate in candidates)
