"""The Hub's OAuth login for pages of ``nbchat serve --jupyterhub``.

A page (a browser's visit, or a notebook page's same-origin request) has no Hub
token to send: it is sent to the Hub's authorize URL; the Hub, where the user
is logged in, sends it back to ``<prefix>oauth_callback`` with a code, which
the service trades for a token (:meth:`HubOAuth.token_for_code`) and keeps in a
signed, HTTP-only cookie on its prefix — JupyterHub's own flow, with PKCE.

The state of a login in progress travels in a signed cookie of its own (named
after the state, so concurrent logins do not collide) rather than in this
process's memory: with ``--workers N`` the callback may reach another worker.
The signing key is derived from the service's Hub token, which every worker and
replica of the service shares and nobody else knows.

A cookie is taken only from a same-origin request (``Sec-Fetch-Site``), and the
security middleware refuses a foreign ``Origin`` before this runs: a page of
another site cannot ride on a user's login.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import posixpath
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlencode

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import RedirectResponse
from starlette.types import Receive, Scope, Send
from tornado.httputil import url_concat
from tornado.web import HTTPError, create_signed_value, decode_signed_value

from ..wire.contract import TOKEN_PARAM
from .auth import forwarded_scheme, send_refusal

if TYPE_CHECKING:
    from jupyterhub.services.auth import HubOAuth

OAUTH_CALLBACK = "/oauth_callback"
#: how long a login cookie holds (the Hub's own token in it may expire sooner: the next request logs in again)
COOKIE_DAYS = 14
STATE_SECONDS = 600
#: a cookie-carrying request from these ``Sec-Fetch-Site`` values may use it (absent: not a browser's)
SAME_SITE = frozenset({"same-origin", "none"})


class LoginFlow:
    def __init__(self, auth: HubOAuth, prefix: str, *, https: bool = False) -> None:
        self.auth = auth
        self.prefix = prefix
        #: the Hub's public URL is https: the cookies are Secure whatever scheme the proxy forwards
        self.https = https
        self.secret = hmac.new(auth.api_token.encode(), b"nbchat login cookies", hashlib.sha256).hexdigest()

    # ------------------------------------------------------------ reading the login

    def token_in_cookie(self, cookie: str, headers: Headers) -> str | None:
        site = headers.get("sec-fetch-site")
        if site is not None and site not in SAME_SITE:
            return None
        value = decode_signed_value(self.secret, self.auth.cookie_name, cookie, max_age_days=COOKIE_DAYS)
        return value.decode("ascii", "replace") if value else None

    @staticmethod
    def wants_page(scope: Scope) -> bool:
        """A browser's GET of a page (sent to the login), not an API call (answered 401)."""
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            return False
        headers = Headers(scope=scope)
        if headers.get("sec-fetch-mode") == "navigate" or "text/html" in headers.get("accept", ""):
            return True
        return bool(scope["path"].rstrip("/") + "/" == _prefix_of(scope))  # the service's root is its page

    # ------------------------------------------------------------ the flow

    async def start(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the browser to the Hub's authorize URL, remembering where it was going."""
        state = secrets.token_urlsafe(16)
        query = [(k, v) for k, vs in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()
                 for v in vs if k != TOKEN_PARAM]
        # the path as it was asked (still escaped), so the redirect back names the same resource
        path = scope.get("raw_path", b"").decode("latin-1").partition("?")[0] or scope["path"]
        next_url = path + ("?" + urlencode(query) if query else "")
        verifier, challenge, method = self.auth.generate_pkce_code_challenge()
        kept = json.dumps({"state": state, "next": next_url, "verifier": verifier})
        url = url_concat(self.auth.login_url, {"state": state, "code_challenge": challenge,
                                               "code_challenge_method": method})
        response = RedirectResponse(url, status_code=302)
        response.set_cookie(self._state_cookie(state), create_signed_value(self.secret, self._state_cookie(state),
                                                                           kept).decode(),
                            max_age=STATE_SECONDS, path=self.prefix, httponly=True,
                            secure=self._secure(scope), samesite="lax")
        await response(scope, receive, send)

    async def finish(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``<prefix>oauth_callback``: trade the Hub's code for a token, keep it in the login cookie."""
        query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
        if "error" in query or "code" not in query or "state" not in query:
            reason = query.get("error_description") or query.get("error") or "no code or state came back"
            await send_refusal(scope, receive, send, 400, "oauth_error", f"the Hub's login did not finish: {reason}")
            return
        name = self._state_cookie(query["state"])
        kept = self._kept_state(Headers(scope=scope), name)
        if kept is None or not hmac.compare_digest(str(kept.get("state")), query["state"]):
            await send_refusal(scope, receive, send, 403, "oauth_state_mismatch",
                               "this login was not started here, or took too long: open the page again")
            return
        try:
            token = await self.auth.token_for_code(query["code"], code_verifier=kept.get("verifier"), sync=False)
        except HTTPError as exc:
            await send_refusal(scope, receive, send, 403, "oauth_error",
                               f"the Hub refused the login: {exc.log_message}")
            return
        response = RedirectResponse(_local_path(kept.get("next"), self.prefix), status_code=302)
        response.set_cookie(self.auth.cookie_name, create_signed_value(self.secret, self.auth.cookie_name,
                                                                       token).decode(),
                            max_age=COOKIE_DAYS * 86400, path=self.prefix, httponly=True,
                            secure=self._secure(scope), samesite="lax")
        response.delete_cookie(name, path=self.prefix, secure=self._secure(scope), httponly=True, samesite="lax")
        await response(scope, receive, send)

    def _secure(self, scope: Scope) -> bool:
        return self.https or _is_https(scope)

    def _state_cookie(self, state: str) -> str:
        return f"{self.auth.state_cookie_name}-{hashlib.sha256(state.encode()).hexdigest()[:12]}"

    def _kept_state(self, headers: Headers, name: str) -> dict[str, Any] | None:
        cookie = cookie_parser(headers.get("cookie", "")).get(name)
        # the signature's own age bounds a state: a copied cookie is no good once the login's time is up
        value = decode_signed_value(self.secret, name, cookie, max_age_days=STATE_SECONDS / 86400) if cookie else None
        if value is None:
            return None
        kept = json.loads(value)
        return kept if isinstance(kept, dict) else None


def _prefix_of(scope: Scope) -> str:
    return str(scope.get("root_path", "")) + "/"


def _local_path(next_url: object, prefix: str) -> str:
    """Where to go after the login: a page of this service only (never ``//other.site``, nor a path that a
    browser's dot-segment rule, escaped or not, takes out of the prefix); otherwise the service's root."""
    if not isinstance(next_url, str) or "\\" in next_url or not next_url.startswith(prefix):
        return prefix
    path = unquote(next_url.partition("?")[0])
    if "//" in path or "\\" in path or posixpath.normpath(path) + "/" != path.rstrip("/") + "/" \
            or not path.startswith(prefix):
        return prefix
    return next_url


def _is_https(scope: Scope) -> bool:
    return forwarded_scheme(scope, Headers(scope=scope)) == "https"
