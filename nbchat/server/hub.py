"""``nbchat serve --jupyterhub``: the server as a JupyterHub service.

The Hub starts the service (or is told of an external one), routes
``/services/<name>/`` to it through its proxy, and gives it a ``JUPYTERHUB_*``
environment: :class:`HubService` reads it. :class:`HubAuthMiddleware` then
serves only paths under the service's prefix (the proxy forwards the full path)
and lets in a request only as a Hub user whose credentials carry the service's
access scope (``access:services!service=<name>``), asking the Hub through
JupyterHub's own service-auth code (:class:`jupyterhub.services.auth.HubOAuth`,
whose cache answers repeated requests with one token without a round trip).
Credentials are a Hub API token (``Authorization: token|Bearer X`` or
``?token=X``: what a kernel has as ``JUPYTERHUB_API_TOKEN``) or, for pages,
the cookie the service's OAuth login sets (:mod:`.hub_login`). No credentials:
401, or for a page the Hub's login; credentials without the scope: 403.
``/health`` stays open. The user goes on the request's scope (:func:`user_of`)
so turns can be owned (:mod:`.owned`).

JupyterHub is imported here and only here (with :mod:`.hub_login`): the app
imports this module only in this mode.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from jupyterhub.services.auth import HubOAuth
from starlette.datastructures import Headers
from starlette.requests import Request, cookie_parser
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from tornado.web import HTTPError

from ..wire.contract import HEALTH_PATH, TOKEN_PARAM
from .auth import send_refusal
from .hub_login import OAUTH_CALLBACK, LoginFlow
from .owned import USER_KEY, HubUser, user_of

log = logging.getLogger("nbchat.server.hub")

#: a custom scope (``c.JupyterHub.custom_scopes``) whose holders may read and stop every user's turns
ADMIN_SCOPE = "custom:nbchat:admin"
#: the environment a Hub gives a service it starts (and an external service's operator sets)
REQUIRED = ("JUPYTERHUB_SERVICE_NAME", "JUPYTERHUB_API_TOKEN", "JUPYTERHUB_API_URL")


@dataclass(frozen=True)
class HubService:
    """What the Hub tells this service: its name, URL prefix and bind URL, and how to reach the Hub."""

    name: str
    prefix: str
    url: str
    api_url: str
    api_token: str
    client_id: str
    #: the Hub's public URL (``c.JupyterHub.public_url``), when set: its origin is the pages' origin
    public_url: str

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> HubService:
        env = os.environ if environ is None else environ
        missing = [name for name in REQUIRED if not env.get(name)]
        if missing:
            raise ValueError("--jupyterhub needs the environment a JupyterHub gives its services; "
                             f"{', '.join(missing)} is not set (run it as a service in jupyterhub_config.py, "
                             "see docs/deployment.md)")
        name = env["JUPYTERHUB_SERVICE_NAME"]
        prefix = env.get("JUPYTERHUB_SERVICE_PREFIX") or f"/services/{name}/"
        prefix = "/" + prefix.strip("/") + "/"
        return cls(name=name, prefix=prefix, url=env.get("JUPYTERHUB_SERVICE_URL", ""),
                   api_url=env["JUPYTERHUB_API_URL"], api_token=env["JUPYTERHUB_API_TOKEN"],
                   client_id=env.get("JUPYTERHUB_CLIENT_ID") or f"service-{name}",
                   public_url=env.get("JUPYTERHUB_PUBLIC_URL", ""))

    def bind(self) -> tuple[str | None, int | None]:
        """The host and port of ``JUPYTERHUB_SERVICE_URL`` (None for what it does not say)."""
        parts = urlsplit(self.url)
        return parts.hostname, parts.port

    def public_origin(self) -> str | None:
        parts = urlsplit(self.public_url)
        return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None

    def make_auth(self, cache_seconds: int) -> HubOAuth:
        return HubOAuth(api_token=self.api_token, api_url=self.api_url, base_url=self.prefix,
                        oauth_client_id=self.client_id, cache_max_age=cache_seconds,
                        access_scopes={f"access:services!service={self.name}"} | _env_scopes())


def _env_scopes() -> set[str]:
    # the Hub names the scopes that give access to this service (HubOAuth's own default reads them)
    named = os.environ.get("JUPYTERHUB_OAUTH_ACCESS_SCOPES")
    return set(json.loads(named)) if named else set()


def token_of(scope: Scope, headers: Headers) -> str | None:
    """A Hub token from ``Authorization: token|Bearer X`` or the ``token`` query parameter (which a browser's
    WebSocket and EventSource need: they cannot set headers)."""
    kind, _, value = headers.get("authorization", "").partition(" ")
    if kind.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    found = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(TOKEN_PARAM)
    return found[0] if found else None


NO_CREDENTIALS = ("this nbchat runs as a JupyterHub service: send a Hub API token "
                  "('Authorization: token $JUPYTERHUB_API_TOKEN') or log in through the Hub")
NO_SCOPE = ("your Hub credentials do not grant access to this service: ask the Hub's admin for a role with "
            "the scope access:services!service={name}")


class HubAuthMiddleware:
    """Serve the prefix only, and only to Hub users allowed to use the service (see the module's doc)."""

    def __init__(self, app: ASGIApp, service: HubService, cache_seconds: int) -> None:
        self.app = app
        self.service = service
        self.auth = service.make_auth(cache_seconds)
        # HubAuth reads an age of 0 as "keep for ever": 0 here asks the Hub every time instead
        self.use_cache = cache_seconds > 0
        self.login = LoginFlow(self.auth, service.prefix, https=service.public_url.startswith("https:"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        prefix = self.service.prefix
        if not (path + "/").startswith(prefix):
            await send_refusal(scope, receive, send, 404, "not_found",
                               f"this server serves the JupyterHub service {self.service.name} under {prefix}")
            return
        scope = {**scope, "root_path": scope.get("root_path", "") + prefix.rstrip("/")}
        route = path[len(prefix) - 1:] or "/"
        if route == HEALTH_PATH:
            await self.app(scope, receive, send)
            return
        if route == OAUTH_CALLBACK and scope["type"] == "http":
            await self.login.finish(scope, receive, send)
            return
        try:
            model = await self._user_model(scope)
        except HTTPError as exc:  # the Hub did not answer, or refused the service's own token
            log.error("cannot check a request's credentials with the Hub: %s", exc)
            await send_refusal(scope, receive, send, 502, "hub_unavailable",
                               "the JupyterHub could not be asked who sent this request; try again shortly")
            return
        if model is None:
            if self.login.wants_page(scope):
                await self.login.start(scope, receive, send)
                return
            await send_refusal(scope, receive, send, 401, "unauthorized", NO_CREDENTIALS)
            return
        if not self.auth.check_scopes(self.auth.access_scopes, model):
            await send_refusal(scope, receive, send, 403, "forbidden", NO_SCOPE.format(name=self.service.name))
            return
        scopes = set(model.get("scopes", ()))
        user = HubUser(str(model["name"]), admin=ADMIN_SCOPE in scopes)
        await self.app({**scope, USER_KEY: user}, receive, send)

    async def _user_model(self, scope: Scope) -> dict[str, Any] | None:
        headers = Headers(scope=scope)
        token = token_of(scope, headers)
        if token is None:
            cookie = cookie_parser(headers.get("cookie", "")).get(self.auth.cookie_name)
            token = self.login.token_in_cookie(cookie, headers) if cookie else None
        if not token:
            return None
        model: dict[str, Any] | None = await self.auth.user_for_token(token, use_cache=self.use_cache,
                                                                           sync=False)
        return model


async def whoami(request: Request) -> Response:
    """The service's root: who the Hub says you are (a page visit lands here after the login)."""
    user = user_of(request)
    assert user is not None  # the middleware lets no request through without one
    return JSONResponse({"name": user.name, "admin": user.admin})
