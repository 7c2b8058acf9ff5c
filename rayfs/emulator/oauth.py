"""The OAuth 2.0 authorization and token endpoints.

The authorization endpoint approves every request at once, as if the user had
logged in and consented. The token endpoint follows the RAYTeams (AWS Cognito)
shape: form-encoded requests, client credentials in HTTP Basic or in the form,
PKCE, and errors as HTTP 400 `{"error": ...}`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aiohttp import web

from .credentials import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, TokenRegistry, base64url
from .state import STATE_KEY

logger = logging.getLogger(__name__)

_LOOPBACK_REDIRECT_HOSTS = {"127.0.0.1", "localhost", "::1"}


def _oauth_error(error: str, description: str) -> web.Response:
    logger.info("OAuth request rejected: %s (%s)", error, description)
    return web.json_response({"error": error, "error_description": description}, status=400, headers={"Cache-Control": "no-store"})


def _is_loopback_redirect(uri: str) -> bool:
    parts = urlsplit(uri)
    return parts.scheme == "http" and parts.hostname in _LOOPBACK_REDIRECT_HOSTS


async def authorize(request: web.Request) -> web.Response:
    """Approve an authorization request and redirect back with `code` and `state`.

    Only loopback `http://` redirect URIs are accepted: the emulator has no
    client registry, and it must not redirect a browser anywhere else.
    """
    query = request.query
    client_id = query.get("client_id", "")
    redirect_uri = query.get("redirect_uri", "")
    if query.get("response_type") != "code":
        return _oauth_error("invalid_request", "response_type must be 'code'")
    if client_id != DEMO_CLIENT_ID:
        return _oauth_error("invalid_client", f"unknown client_id; use {DEMO_CLIENT_ID}")
    if not redirect_uri or not _is_loopback_redirect(redirect_uri):
        return _oauth_error("invalid_request", "redirect_uri must be an http:// URI on 127.0.0.1, localhost or [::1]")

    challenge = query.get("code_challenge") or None
    method = query.get("code_challenge_method", "plain" if challenge else "")
    if challenge and method not in ("S256", "plain"):
        return _oauth_error("invalid_request", "code_challenge_method must be S256 or plain")

    registry: TokenRegistry = request.app[STATE_KEY].tokens
    code = registry.add_code(client_id, redirect_uri, challenge, method)

    parts = urlsplit(redirect_uri)
    params = parse_qsl(parts.query, keep_blank_values=True)
    params.append(("code", code))
    if "state" in query:
        params.append(("state", query["state"]))
    location = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(params), parts.fragment))
    logger.info("authorization approved for client %s", client_id)
    raise web.HTTPFound(location)


def _client_credentials(request: web.Request, form: dict[str, str]) -> tuple[str, str]:
    authorization = request.headers.get("Authorization", "")
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() == "basic" and encoded:
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return "", ""
        client_id, _, client_secret = decoded.partition(":")
        return client_id, client_secret
    return form.get("client_id", ""), form.get("client_secret", "")


def _verifier_matches(verifier: str, challenge: str, method: str) -> bool:
    if method == "S256":
        computed = base64url(hashlib.sha256(verifier.encode("ascii", "replace")).digest())
        return hmac.compare_digest(computed, challenge)
    return hmac.compare_digest(verifier, challenge)


async def token(request: web.Request) -> web.Response:
    """Exchange an authorization code or a refresh token for tokens."""
    if request.content_type != "application/x-www-form-urlencoded":
        return _oauth_error("invalid_request", "the body must be application/x-www-form-urlencoded")
    form = {key: str(value) for key, value in (await request.post()).items()}

    client_id, client_secret = _client_credentials(request, form)
    if client_id != DEMO_CLIENT_ID or not hmac.compare_digest(client_secret, DEMO_CLIENT_SECRET):
        return _oauth_error("invalid_client", "invalid client_id or client_secret")

    state = request.app[STATE_KEY]
    registry: TokenRegistry = state.tokens
    lifetime_s = float(state.faults.settings["token_lifetime_s"])
    grant_type = form.get("grant_type", "")

    if grant_type == "authorization_code":
        code = form.get("code", "")
        if not code:
            return _oauth_error("invalid_request", "code is missing")
        pending = registry.take_code(code)
        if pending is None or pending.client_id != client_id:
            return _oauth_error("invalid_grant", "the code is invalid, expired or already used")
        if form.get("redirect_uri", "") != pending.redirect_uri:
            return _oauth_error("invalid_grant", "redirect_uri does not match the authorization request")
        if pending.code_challenge is not None:
            verifier = form.get("code_verifier", "")
            if not verifier or not _verifier_matches(verifier, pending.code_challenge, pending.code_challenge_method):
                return _oauth_error("invalid_grant", "code_verifier does not match the code_challenge")
        body = registry.issue(client_id, lifetime_s)
        logger.info("tokens issued for client %s (authorization_code)", client_id)

    elif grant_type == "refresh_token":
        refresh_token = form.get("refresh_token", "")
        if not refresh_token:
            return _oauth_error("invalid_request", "refresh_token is missing")
        if registry.refresh_client(refresh_token) != client_id:
            return _oauth_error("invalid_grant", "the refresh token is invalid")
        body = registry.issue(client_id, lifetime_s, refresh_token=refresh_token)
        logger.info("tokens issued for client %s (refresh_token)", client_id)

    elif not grant_type:
        return _oauth_error("invalid_request", "grant_type is missing")
    else:
        return _oauth_error("unsupported_grant_type", "grant_type must be authorization_code or refresh_token")

    return web.json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/oauth2/authorize", authorize)
    app.router.add_get("/login", authorize)
    app.router.add_post("/oauth2/token", token)
