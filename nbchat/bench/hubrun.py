"""A real JupyterHub on this machine, with nbchat as its service: for the tests and the fairness benchmark.

:class:`LocalHub` writes a ``jupyterhub_config.py`` into a directory of its own
(cookie secret, proxy pid file, the users' homes; the database is sqlite in
memory: a Hub lives for one run), starts ``jupyterhub`` with its real proxy
(``configurable-http-proxy``, from npm) on free loopback ports, the
``DummyAuthenticator`` (one password for everyone) and the
``SimpleLocalProcessSpawner`` (single-user servers as this user, root allowed:
JupyterLab, its app exposed to the page so that a browser test can run cells),
and ``nbchat serve --jupyterhub`` as the Hub-managed service ``nbchat``. A
service ``test-admin`` holds an admin token for the REST API, through which
:meth:`LocalHub.create_user` makes users, puts them in the groups whose roles
grant the service's access scope (group ``nbchat``) or the admin scope (group
``nbchat-admins``), and mints each an API token.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx

from ..server.hub import ADMIN_SCOPE
from .procs import alive, descendants, free_port

SERVICE = "nbchat"
ACCESS = f"access:services!service={SERVICE}"
PASSWORD = "nbchat-hub-test-password"
START_TIMEOUT = 180.0  # covers the service loading the embedded model (in each worker)
ROOT = Path(__file__).resolve().parents[2]
#: the service's options when nobody says: the echo backend, as fast as it can
ECHO = ("--backend", "echo", "--rate", "0")


@dataclass(frozen=True)
class HubUserToken:
    name: str
    token: str


class HubStartError(RuntimeError):
    """The Hub, its proxy or the nbchat service did not come up."""


class LocalHub:
    def __init__(self, workdir: Path, service_args: Sequence[str] = ECHO,
                 extra_config: str = "", service_env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.service_args = tuple(service_args)
        self.extra_config = extra_config
        self.service_env = dict(service_env or {})
        self.proxy_port, self.hub_port, self.api_port, self.service_port = (free_port() for _ in range(4))
        self.admin_token = secrets.token_hex(24)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "jupyterhub.log"

    @property
    def url(self) -> str:
        """The proxy: the Hub's public URL."""
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def service_url(self) -> str:
        return f"{self.url}/services/{SERVICE}"

    @property
    def homes(self) -> Path:
        """Where the spawner puts its users' homes (their servers' root directories)."""
        return self.workdir / "home"

    def config_text(self) -> str:
        pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = {"PYTHONPATH": pythonpath, **self.service_env}
        command = [sys.executable, "-m", "nbchat", "serve", "--jupyterhub", "--log-level", "warning",
                   *self.service_args]
        roles = [
            {"name": "nbchat-users", "scopes": [ACCESS], "groups": ["nbchat"]},
            {"name": "nbchat-admins", "scopes": [ACCESS, ADMIN_SCOPE], "groups": ["nbchat-admins"]},
            {"name": "test-admin", "services": ["test-admin"],
             "scopes": ["admin:users", "admin:groups", "tokens", "admin:servers", "access:servers", "read:users"]},
            # a single-user server's token (the kernel's JUPYTERHUB_API_TOKEN) may use the service too
            {"name": "server", "scopes": ["users:activity!user", "access:servers!server", ACCESS]},
        ]
        services = [
            {"name": SERVICE, "url": f"http://127.0.0.1:{self.service_port}", "command": command,
             "environment": env, "oauth_no_confirm": True, "oauth_client_allowed_scopes": [ADMIN_SCOPE]},
            {"name": "test-admin", "api_token": self.admin_token},
        ]
        return "\n".join([
            "c = get_config()  # noqa",
            f"c.JupyterHub.bind_url = {self.url + '/'!r}",
            "c.JupyterHub.hub_ip = '127.0.0.1'",
            f"c.JupyterHub.hub_port = {self.hub_port}",
            f"c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{self.api_port}'",
            f"c.ConfigurableHTTPProxy.pid_file = {str(self.workdir / 'proxy.pid')!r}",
            # in memory: no file to create and sync on each of the start's many commits
            "c.JupyterHub.db_url = 'sqlite:///:memory:'",
            f"c.JupyterHub.cookie_secret_file = {str(self.workdir / 'cookie_secret')!r}",
            f"c.JupyterHub.pid_file = {str(self.workdir / 'jupyterhub.pid')!r}",
            "c.JupyterHub.authenticator_class = 'dummy'",
            f"c.DummyAuthenticator.password = {PASSWORD!r}",
            "c.Authenticator.allow_all = True",
            "c.JupyterHub.spawner_class = 'simple'",
            "c.Spawner.args = ['--allow-root', '--LabApp.expose_app_in_browser=True', "
            "'--LabApp.extension_manager=readonly']",
            "c.Spawner.default_url = '/lab'",
            f"c.SimpleLocalProcessSpawner.home_dir_template = {str(self.homes) + '/{username}'!r}",
            f"c.Spawner.environment = {{'NBCHAT_URL': {self.service_url + '/'!r}, 'PYTHONPATH': {pythonpath!r}}}",
            f"c.JupyterHub.custom_scopes = {{{ADMIN_SCOPE!r}: {{'description': 'read and stop any user\\'s turns'}}}}",
            "c.JupyterHub.load_groups = {'nbchat': {'users': []}, 'nbchat-admins': {'users': []}}",
            f"c.JupyterHub.load_roles = {roles!r}",
            f"c.JupyterHub.services = {services!r}",
            self.extra_config,
        ]) + "\n"

    def start(self) -> None:
        binary = shutil.which("jupyterhub")
        if binary is None or shutil.which("configurable-http-proxy") is None:
            raise HubStartError("needs jupyterhub (pip install -e '.[hub]') and configurable-http-proxy "
                                "(npm install -g configurable-http-proxy)")
        config = self.workdir / "jupyterhub_config.py"
        config.write_text(self.config_text())
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(config)], cwd=self.workdir,
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait_until_serving()
        except BaseException:
            self.stop()
            raise

    def _wait_until_serving(self) -> None:
        # A subprocess's readiness cannot be awaited: ask the service through the proxy, within a bound.
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(timeout=5) as http:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise HubStartError(f"jupyterhub exited with {self.proc.returncode}: {self.tail()}")
                try:
                    if http.get(f"{self.service_url}/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise HubStartError(f"the nbchat service was not reachable through the proxy: {self.tail()}")
                time.sleep(0.2)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def processes(self) -> list[int]:
        """The Hub's process tree (the proxy, the service, its workers and model, spawned servers)."""
        return [] if self.proc is None else [self.proc.pid, *descendants(self.proc.pid)]

    def stop(self, timeout: float = 30.0) -> list[int]:
        """Stop the Hub (which stops its proxy, service and servers); the pids that outlived it (then killed)."""
        if self.proc is None:
            return []
        tree = self.processes()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + 10
        while (left := [pid for pid in tree if alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        return left

    # ------------------------------------------------------------ the REST API

    def api(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        response = httpx.request(method, f"{self.url}/hub/api{path}", timeout=30,
                                 headers={"Authorization": f"token {self.admin_token}"}, **kwargs)  # type: ignore[arg-type]
        response.raise_for_status()
        return response

    def create_user(self, name: str, *, access: bool = True, admin: bool = False) -> HubUserToken:
        """A Hub user (in the group that may use the service, or the admins') with an API token of its own."""
        path = quote(name, safe="")  # a name may hold any character the Hub allows, "/" and "%" too
        self.api("POST", f"/users/{path}")
        for group, wanted in (("nbchat", access and not admin), ("nbchat-admins", admin)):
            if wanted:
                self.api("POST", f"/groups/{group}/users", json={"users": [name]})
        token = self.api("POST", f"/users/{path}/tokens", json={"note": "nbchat tests"}).json()["token"]
        return HubUserToken(name, str(token))


