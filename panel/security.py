"""ASGI middleware in front of every panel response: Host allowlist and security headers."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; connect-src 'self'; "
    "frame-src 'self'"
)
_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    # Not no-referrer: under that policy browsers send `Origin: null` on the panel's own form
    # posts, which the origin check must refuse. same-origin still tells other sites nothing.
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=()",
}


def security_headers() -> dict[str, str]:
    """The headers for a response sent outside the middleware (Starlette's 500 handler)."""
    return {**_HEADERS, "cache-control": "no-store", "pragma": "no-cache"}


def host_name(host_header: str) -> str:
    """`Host` without its port, lower case ("[::1]:2580" -> "[::1]")."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class PanelSecurityMiddleware:
    """Refuse unknown Host headers (DNS rebinding); add the security headers everywhere.

    A handler may set its own value for one of these headers (the sandboxed template preview
    does); the middleware then leaves it alone.

    Every response except static files is `Cache-Control: no-store`: pages show queue
    contents and settings, which must not be kept by browsers or shared caches.
    """

    def __init__(self, app: ASGIApp, *, allowed_hosts: Iterable[str], static_prefix: str
                 ) -> None:
        self.app = app
        self.allowed_hosts = frozenset(host_name(h) for h in allowed_hosts)
        self.static_prefix = static_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = host_name(Headers(scope=scope).get("host", ""))
        if host not in self.allowed_hosts:
            await _plain(send, 421, "Misdirected request: this host name is not served here "
                         "(add it to [panel] allowed_hosts).\n")
            return
        path = str(scope.get("path", ""))
        root = str(scope.get("root_path", ""))
        if root and path.startswith(root + "/"):
            path = path[len(root):]
        static = path.startswith(self.static_prefix)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _HEADERS.items():
                    # A response may carry a stricter policy of its own (template previews).
                    if name not in headers:
                        headers[name] = value
                headers["cache-control"] = ("public, max-age=3600" if static
                                            else "no-store")
                if not static:
                    headers["pragma"] = "no-cache"
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"),
               (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]
    headers += [(k.encode(), v.encode()) for k, v in _HEADERS.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
