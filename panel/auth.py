"""Who is asking: sessions for pages, API keys for the JSON API; CSRF and origin checks."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from itsdangerous import BadSignature, Signer
from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from mailapi import accounts
from mailapi.clientaddress import in_networks, parse_address, parse_networks
from panel import sessions
from panel.web import Form, panel_state, read, read_form, write

LOGIN_COOKIE = "mailapi_login"


class LoginRequired(Exception):
    """No live session: pages redirect to /login, the API answers 401."""


class Forbidden(Exception):
    """A failed CSRF / origin check or a missing scope; the message is shown escaped."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Principal:
    """The caller of the admin API: an API key, or a loopback caller when enabled."""

    actor: str
    scope: str  # read | admin


def is_secure(request: Request) -> bool:
    """TLS to us, or a trusted proxy that says its client used https."""
    if request.url.scheme == "https":
        return True
    settings = panel_state(request).settings.get()
    peer = parse_address(request.client.host if request.client else None)
    if not in_networks(peer, parse_networks(tuple(settings.trusted_proxies))):
        return False
    return request.headers.get("x-forwarded-proto", "").strip().lower() == "https"


def set_cookie(request: Request, response: Response, name: str, value: str,
               max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, path=panel_state(request).root or "/",
                        secure=is_secure(request), httponly=True, samesite="strict")


def clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(name, path=panel_state(request).root or "/",
                           secure=is_secure(request), httponly=True, samesite="strict")


async def current_session(request: Request) -> sessions.Session | None:
    if hasattr(request.state, "session"):
        cached: sessions.Session | None = request.state.session
        return cached
    now = panel_state(request).clock()
    cookie = request.cookies.get(sessions.COOKIE)
    session = await read(request, lambda c: sessions.load(c, cookie, now=now)) if cookie else None
    if session is not None:
        # Showing a page consumes its flash messages; a POST keeps them for the redirect.
        clear = request.method == "GET"
        await write(request, lambda c: sessions.touch(c, session, now=now, clear_flash=clear))
    request.state.session = session
    return session


async def require_session(request: Request) -> sessions.Session:
    session = await current_session(request)
    if session is None:
        raise LoginRequired
    return session


def check_origin(request: Request) -> None:
    """A state change must come from our own pages: Sec-Fetch-Site and Origin agree."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        raise Forbidden(f"cross-site request refused (Sec-Fetch-Site: {fetch_site})")
    origin = request.headers.get("origin")
    if origin is None:
        return
    host = request.headers.get("host", "").lower()
    try:
        netloc = urlsplit(origin).netloc.lower()
    except ValueError:  # "http://[": not a URL, so not ours
        netloc = None
    if origin == "null" or netloc != host:
        raise Forbidden("cross-origin request refused (Origin does not match this panel)")


async def require_post(request: Request) -> tuple[sessions.Session, Form]:
    """A logged-in admin's form post that passed the origin and CSRF checks."""
    session = await require_session(request)
    check_origin(request)
    form = await read_form(request)
    token = form.get("csrf_token")
    if not token or not hmac.compare_digest(token.encode(), session.csrf_token.encode()):
        raise Forbidden("the form's security token is missing or stale; reload the page and "
                        "try again")
    return session, form


# --- login CSRF (before there is a session) ---------------------------------------------

def _login_signer(secret: str) -> Signer:
    return Signer(secret, salt="mailapi.panel.login")


async def issue_login_token(request: Request) -> str:
    """A random token for the login form, set as a signed cookie too (double submit)."""
    token = secrets.token_urlsafe(24)
    request.state.login_csrf = token
    secret = await read(request, sessions.read_secret)
    request.state.login_cookie = _login_signer(secret).sign(token).decode()
    return token


async def check_login_token(request: Request, form: Form) -> bool:
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    submitted = form.get("csrf_token")
    if not cookie or not submitted:
        return False
    secret = await read(request, sessions.read_secret)
    try:
        expected = _login_signer(secret).unsign(cookie).decode()
    except (BadSignature, UnicodeDecodeError):
        return False
    return hmac.compare_digest(expected.encode(), submitted.encode())


# --- the admin API ----------------------------------------------------------------------

def _loopback_direct(request: Request) -> bool:
    """The TCP peer is loopback and no proxy forwarded the request on someone's behalf."""
    if any(h in request.headers for h in ("x-forwarded-for", "x-real-ip", "forwarded")):
        return False
    peer = parse_address(request.client.host if request.client else None)
    return isinstance(peer, ipaddress.IPv4Address | ipaddress.IPv6Address) and peer.is_loopback


async def api_principal(request: Request, *, need_admin: bool) -> Principal:
    state = panel_state(request)
    header = request.headers.get("authorization", "")
    principal: Principal | None = None
    if header:
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise LoginRequired
        now = state.clock()
        key = await write(request, lambda c: _use_key(c, presented.strip(), now))
        if key is None:
            raise LoginRequired
        principal = Principal(f"apikey:{key.name} ({key.prefix}…)", key.scope)
    elif state.config.panel.loopback_api_without_auth and _loopback_direct(request):
        principal = Principal("loopback", "admin")
    if principal is None:
        raise LoginRequired
    if need_admin and principal.scope != "admin":
        raise Forbidden("this API key is read-only")
    return principal


def _use_key(connection: Connection, presented: str, now: float) -> accounts.ApiKey | None:
    key = accounts.authenticate_api_key(connection, presented, now=now)
    if key is not None:
        accounts.touch_api_key(connection, key.id, now=now)
    return key
