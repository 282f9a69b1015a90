"""Security at the door: host and origin checks, token check and CORS, as pure ASGI middleware.

It wraps HTTP and WebSocket alike, so no route can forget it. Order of checks:
a ``Host`` that is not one of the server's own names gets 403 (when it listens
on loopback only: a DNS-rebinding page reaches it under the attacker's
hostname, and sends that name, with no ``Origin`` at all on same-origin GETs);
a foreign ``Origin`` gets 403 (before the token, so a hostile page learns
nothing about tokens); a CORS preflight from an allowed origin gets 204
without a token (browsers never send credentials on preflight); then every
path but ``/health`` needs the token, compared in constant time. A refusal
(401, 403) to an origin the server admits carries CORS headers, so the page
can read why.

A page's origin counts as the server's own only under a name that means this
machine (an IP literal, ``localhost``), never because it equals the ``Host``
header: under DNS rebinding both are the attacker's name. And a server bound
to a public address with auth off is refused at start (:func:`public_bind_refusal`)
unless its operator says so explicitly: nothing would guard it.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Iterable
from urllib.parse import parse_qs, urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from websockets.frames import CloseCode

from ..wire.contract import HEALTH_PATH, TOKEN_PARAM, TURN_HEADER

ALLOWED_HEADERS = "uid, token, authorization, content-type, last-event-id"
EXPOSED_HEADERS = TURN_HEADER
OPEN_PATHS = frozenset({HEALTH_PATH})
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain"})


def hostname_of(authority: str) -> str | None:
    """The host name of a ``Host`` header or an origin's authority, lowercased; None when malformed."""
    try:
        name = urlsplit("//" + authority).hostname
    except ValueError:
        return None
    return name.rstrip(".") if name else None


def forwarded_scheme(scope: Scope, headers: Headers) -> str:
    """The scheme the client used, as an origin names it (http or https): the proxy's
    ``X-Forwarded-Proto`` when one says, else the connection's own."""
    scheme = headers.get("x-forwarded-proto", "").split(",")[0].strip() or scope.get("scheme", "http")
    return {"ws": "http", "wss": "https"}.get(scheme, scheme)


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    return name in LOCAL_NAMES or (is_ip_literal(name) and ipaddress.ip_address(name).is_loopback)


def public_bind_refusal(host: str, token: str | None, allowed: bool) -> str | None:
    """Why a server must not start with these settings, or None: a bind beyond loopback with auth
    off serves anyone who reaches the port, and any web page that names it (its Host check is off,
    since a public server is reached under names it cannot know)."""
    if token != "" or is_loopback(host) or allowed:
        return None
    return (f"refusing to serve on {host} with auth off (--token ''): anyone who can reach the port, and any "
            "web page a browser on that network opens (DNS rebinding), could use the model and read every turn. "
            "Keep a token, bind to 127.0.0.1, or pass --public-without-token if the network itself is trusted.")


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


async def send_refusal(scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str,
                       headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Refuse an HTTP request or a WebSocket handshake with the protocol's JSON error."""
    body = _error(code, message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *(headers or [])]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await receive()  # websocket.connect
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION, "reason": code})


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, token: str, allow_origins: Iterable[str] = (),
                 bind_host: str = "127.0.0.1", behind_proxy: bool = False) -> None:
        self.app = app
        self.token = token.encode()
        # A set is kept by reference, not copied: the app may admit an origin while it runs
        # (a notebook page that streams from the kernel's own server, see ``AppContext.origins``).
        self.origins = allow_origins if isinstance(allow_origins, set) else set(allow_origins)
        # A server bound to loopback answers only to names that mean this machine (IP
        # literals, localhost, and the hosts of allowed origins, read at each request since
        # origins may be admitted later). Bound to a public address, it is reached under
        # names it cannot know: the token guards it.
        self.check_host = is_loopback(bind_host) and "*" not in self.origins and not behind_proxy
        # Behind a JupyterHub's proxy the Host is the Hub's public name, which the server cannot know,
        # and every request must carry the Hub's credentials, which a rebinding page has not: a page
        # of the proxy's own origin (as the proxy forwards it) is the server's own.
        self.behind_proxy = behind_proxy
        self.own_names = LOCAL_NAMES | {bind_host.strip("[]").lower()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host")
        origin = headers.get("origin")
        if host is not None and not self.host_allowed(host):
            await self._reject(scope, receive, send, 403, "host_not_allowed",
                               f"Host {host} is not a name of this server; reach it as localhost or by IP, or "
                               "start it with --allow-origin for the origin that uses this name",
                               origin if origin is not None and self.admitted(origin) else None)
            return
        if origin is not None and not self.origin_allowed(origin, scope, headers):
            await self._reject(scope, receive, send, 403, "origin_not_allowed",
                               f"Origin {origin} is not allowed; start the server with --allow-origin {origin}")
            return
        if scope["type"] == "http" and scope["method"] == "OPTIONS" and origin is not None \
                and "access-control-request-method" in headers:
            await self._preflight(origin, send)
            return
        if scope["path"] not in OPEN_PATHS and not self.token_ok(scope, headers):
            await self._reject(scope, receive, send, 401, "unauthorized",
                               "missing or wrong token: pass the token printed by `nbchat serve` as header "
                               "'Authorization: Bearer TOKEN', header 'token: TOKEN' or query '?token=TOKEN'",
                               origin)
            return
        if origin is not None and scope["type"] == "http":
            send = self._with_cors(origin, send)
        await self.app(scope, receive, send)

    def host_allowed(self, host: str) -> bool:
        if not self.check_host:
            return True
        name = hostname_of(host)
        if name is None:
            return False
        if name in self.own_names or name.endswith(".localhost") or is_ip_literal(name):
            return True
        # last, and per request: the admitted origins can change while the server runs
        return name in {hostname_of(urlsplit(o).netloc) for o in self.origins}

    def admitted(self, origin: str) -> bool:
        """An origin allowed by ``--allow-origin`` (or admitted since)."""
        return "*" in self.origins or origin in self.origins

    def origin_allowed(self, origin: str, scope: Scope, headers: Headers) -> bool:
        if self.admitted(origin):
            return True
        if self.behind_proxy:
            return self.proxy_origin(origin, scope, headers)
        # The server's own origin: the page was served by this host and port, under a name that
        # means this machine (or the bind address's). Equal to the Host header is not enough,
        # whatever the bind: under DNS rebinding the attacker's name is in both (and a public
        # bind checks no Host at all).
        scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "http"), scope.get("scheme", "http"))
        host = headers.get("host")
        name = hostname_of(host) if host is not None else None
        if name is None or not (name in self.own_names or name.endswith(".localhost") or is_ip_literal(name)):
            return False
        return hmac.compare_digest(origin.encode(), f"{scheme}://{host}".encode())

    @staticmethod
    def proxy_origin(origin: str, scope: Scope, headers: Headers) -> bool:
        """The origin of the proxy's pages: its Host under the scheme it was reached by."""
        host = headers.get("host")
        if host is None:
            return False
        return hmac.compare_digest(origin.encode(), f"{forwarded_scheme(scope, headers)}://{host}".encode())

    def token_ok(self, scope: Scope, headers: Headers) -> bool:
        if not self.token:
            return True
        candidates: list[str] = []
        if "token" in headers:
            candidates.append(headers["token"])
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            candidates.append(auth[7:].strip())
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        candidates.extend(query.get(TOKEN_PARAM, []))
        # compare every candidate, so the time taken does not depend on which one matched
        ok = False
        for candidate in candidates:
            ok |= hmac.compare_digest(candidate.encode(), self.token)
        return ok

    def _cors_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        return [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin"),
                (b"access-control-expose-headers", EXPOSED_HEADERS.encode())]

    def _with_cors(self, origin: str, send: Send) -> Send:
        extra = self._cors_headers(origin)

        async def cors_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return cors_send

    async def _preflight(self, origin: str, send: Send) -> None:
        headers = [*self._cors_headers(origin),
                   (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                   (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
                   (b"access-control-max-age", b"600"), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _reject(self, scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str,
                      origin: str | None = None) -> None:
        """Refuse with a JSON error; ``origin`` (an admitted page's) gets CORS headers to read it by."""
        await send_refusal(scope, receive, send, status, code, message,
                           self._cors_headers(origin) if origin is not None else None)
