"""Attacks on the service's Hub authentication, each through the Hub's real proxy: names that escape alike,
uids dressed as another user's, the admin scope on a token that lacks it, a replayed or redirected login,
the login cookies' flags, a token in the URL in the logs, a revoked token, a Hub that is down."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pytest

from nbchat.bench.hubrun import ACCESS, ECHO, SERVICE, HubUserToken, LocalHub
from nbchat.server.hub import ADMIN_SCOPE
from tests.hub.conftest import HubFactory, HubPool, new_user
from tests.hub.test_isolation import auth, read_ndjson, turn_body
from tests.hub.test_login import hub_login

pytestmark = pytest.mark.hub

PREFIX = f"/services/{SERVICE}/"


def queue(hub: LocalHub, user: HubUserToken, content: str, uid: str) -> None:
    """A turn of ``user`` on ``uid`` that waits, unstarted, for its reader."""
    answer = httpx.post(f"{hub.service_url}/turns", headers=auth(user), json=turn_body(content, uid), timeout=30)
    assert answer.status_code == 200, answer.text


def read_uid(hub: LocalHub, user: HubUserToken, uid: str) -> tuple[int, str]:
    """What ``user`` gets asking for the turn on ``uid``: the status, and the answer's text."""
    answer = httpx.get(f"{hub.service_url}/talkByStream", params={"uid": uid, "after": "0"}, headers=auth(user),
                       timeout=30)
    return answer.status_code, read_ndjson(answer)[0] if answer.status_code == 200 else ""


# ---------------------------------------------------------------- namespaces


#: pairs of names whose turns would meet if the owner were joined to the uid unescaped, or escaped by a rule
#: that is not one to one: the uid-less mark in a name, a percent sign, a name and its escaped twin (the Hub
#: refuses "/" in a name)
NAMES = [("ns-a!", "ns-a"), ("ns-b%21", "ns-b!"), ("ns-é", "ns-%c3%a9")]


@pytest.mark.parametrize(("first", "second"), NAMES)
def test_names_that_escape_alike_never_share_a_namespace(hub: LocalHub, first: str, second: str) -> None:
    users = [hub.create_user(first), hub.create_user(second)]
    assert [user.name for user in users] == [first, second]  # the Hub kept both names as they are
    queue(hub, users[0], f"{first}'s secret", "u")
    assert read_uid(hub, users[1], "u") == (204, "")  # nothing of the other user's turn
    mine = httpx.get(f"{hub.service_url}/talkByStream", params={"uid": "u", "after": "0"}, headers=auth(users[0]))
    assert read_ndjson(mine)[0] == f"{first}'s secret"
    by_id = httpx.get(f"{hub.service_url}/talkByStream", headers=auth(users[1]),
                      params={"turn": mine.headers["x-nbchat-turn"], "after": "0"})
    assert by_id.status_code in (204, 404, 410) and "secret" not in by_id.text
    queue(hub, users[1], f"{second}'s own", "u")
    assert read_uid(hub, users[1], "u") == (200, f"{second}'s own")
    assert read_uid(hub, users[0], "u") == (200, f"{first}'s secret")


def test_a_uid_dressed_as_another_users_stored_uid_names_only_ones_own(hub: LocalHub) -> None:
    alice, mallory = new_user(hub), new_user(hub)
    queue(hub, alice, "alice's secret", "shared")
    for crafted in (f"{alice.name}/shared", f"../{alice.name}/shared", f"{alice.name}!shared", "/shared"):
        assert read_uid(hub, mallory, crafted) == (204, ""), crafted
        queue(hub, mallory, "mallory's", crafted)
        assert read_uid(hub, mallory, crafted) == (200, "mallory's"), crafted
    assert read_uid(hub, alice, "shared") == (200, "alice's secret")  # untouched, never superseded


def test_a_turn_id_from_another_users_headers_opens_nothing(hub: LocalHub) -> None:
    alice, mallory = new_user(hub), new_user(hub)
    queue(hub, alice, "alice's secret", "q")
    mine = httpx.get(f"{hub.service_url}/talkByStream", params={"uid": "q", "after": "0"}, headers=auth(alice))
    turn_id = mine.headers["x-nbchat-turn"]
    for path in (f"/talkByStream?turn={turn_id}&after=0", f"/createSse?turn={turn_id}&after=0"):
        stolen = httpx.get(hub.service_url + path, headers=auth(mallory), timeout=30)
        assert stolen.status_code in (204, 404, 410) and "secret" not in stolen.text, (path, stolen.text)
    stop = httpx.post(f"{hub.service_url}/turns/{turn_id}/interrupt", headers=auth(mallory))
    assert stop.status_code == 404


# ---------------------------------------------------------------- the admin scope


def whoami(hub: LocalHub, token: str) -> dict[str, object]:
    answer = httpx.get(f"{hub.service_url}/", headers={"Authorization": f"token {token}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    result: dict[str, object] = answer.json()
    return result


def test_the_admin_scope_counts_only_as_the_token_carries_it(hub: LocalHub) -> None:
    admin, plain = new_user(hub, admin=True), new_user(hub)
    assert whoami(hub, admin.token)["admin"] is True  # through the role of the admins' group
    narrow = hub.api("POST", f"/users/{quote(admin.name)}/tokens", json={"scopes": [ACCESS]}).json()["token"]
    assert whoami(hub, narrow)["admin"] is False  # the admin's token that does not carry the scope
    queue(hub, plain, "plain's secret", "p")
    assert read_uid(hub, HubUserToken(admin.name, narrow), "p") == (204, "")
    # a user the role does not grant it cannot mint a token that carries it: the Hub refuses
    with pytest.raises(httpx.HTTPStatusError) as refused:
        hub.api("POST", f"/users/{quote(plain.name)}/tokens", json={"scopes": [ACCESS, ADMIN_SCOPE]})
    assert refused.value.response.status_code in (400, 403)
    own = httpx.post(f"{hub.url}/hub/api/users/{plain.name}/tokens", headers=auth(plain),
                     json={"scopes": [ACCESS, ADMIN_SCOPE]})
    assert own.status_code in (400, 403), own.text
    assert whoami(hub, plain.token)["admin"] is False


# ---------------------------------------------------------------- the login


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """Each Set-Cookie of a response by its cookie's name."""
    return {line.split("=", 1)[0]: line for line in response.headers.get_list("set-cookie")}


def login_hops(hub: LocalHub, http: httpx.Client, path: str,
               headers: dict[str, str] | None = None) -> tuple[httpx.Response, httpx.Response, str]:
    """Start a page's login at ``path`` and follow it to the service's callback, not into it: the service's
    first answer, the Hub's, and the callback URL."""
    start = http.get(hub.url + path, headers={"sec-fetch-mode": "navigate", **(headers or {})})
    assert start.status_code == 302, start.text
    authorize = http.get(start.headers["location"] if start.headers["location"].startswith("http")
                         else hub.url + start.headers["location"])
    assert authorize.status_code == 302, authorize.text[:300]
    callback = authorize.headers["location"]
    return start, authorize, callback if callback.startswith("http") else hub.url + callback


@pytest.fixture
def browser(hub: LocalHub) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as http:
        hub_login(hub, http, new_user(hub).name)
        yield http


def test_a_replayed_callback_logs_nobody_in(hub: LocalHub, browser: httpx.Client) -> None:
    _, _, callback = login_hops(hub, browser, PREFIX)
    state_cookies = {c.name: c.value for c in browser.cookies.jar if c.name.startswith(f"service-{SERVICE}-oauth")}
    assert state_cookies
    done = browser.get(callback)
    assert done.status_code == 302 and f"service-{SERVICE}" in set_cookies(done)
    again = browser.get(callback)  # the same browser: its state is spent
    assert again.status_code == 403 and "set-cookie" not in again.headers
    with httpx.Client(timeout=30, cookies=state_cookies) as thief:  # the state cookie copied: the code is spent
        stolen = thief.get(callback)
    assert stolen.status_code == 403 and f"service-{SERVICE}=" not in stolen.headers.get("set-cookie", "")


#: paths a client sends as they are (an escaped "/" or "\\" is no dot segment to it) that name a page off the
#: service once a browser reads the redirect back
@pytest.mark.parametrize("path", ["..%2F..%2Fhub%2Fadmin", "%2e%2e%5C%2e%2e%5Chub/admin", "x%2F..%2F..%2F..%2Fhub"])
def test_the_login_returns_only_to_a_page_of_the_service(hub: LocalHub, browser: httpx.Client, path: str) -> None:
    _, _, callback = login_hops(hub, browser, PREFIX + path)
    done = browser.get(callback)
    assert done.status_code == 302
    target = urlsplit(done.headers["location"])
    assert not target.netloc and target.path == PREFIX, done.headers["location"]


def cookie_flags(line: str) -> None:
    assert f"Path={PREFIX}" in line and "HttpOnly" in line and "SameSite=lax" in line, line


def test_the_login_cookies_are_http_only_lax_and_on_the_prefix(hub: LocalHub, browser: httpx.Client) -> None:
    start, _, callback = login_hops(hub, browser, PREFIX)
    done = browser.get(callback)
    assert done.status_code == 302
    for line in [*set_cookies(start).values(), *set_cookies(done).values()]:
        cookie_flags(line)
        assert "Secure" not in line  # a page over http could not send a Secure cookie back
    assert f"service-{SERVICE}" in set_cookies(done)


def test_the_login_cookies_are_secure_behind_https(hub: LocalHub, browser: httpx.Client) -> None:
    https = {"x-forwarded-proto": "https"}  # what a TLS terminator in front of the proxy says
    start, _, callback = login_hops(hub, browser, PREFIX, headers=https)
    (line,) = set_cookies(start).values()
    cookie_flags(line)
    assert "Secure" in line
    state = line.split(";", 1)[0]  # a client keeps a Secure cookie for https only: hand it back as one would
    done = httpx.get(callback, headers={**https, "cookie": state}, timeout=30)
    assert done.status_code == 302, done.text
    login = set_cookies(done)[f"service-{SERVICE}"]
    cookie_flags(login)
    assert "Secure" in login


# ---------------------------------------------------------------- tokens in logs, revoked, a Hub that is down


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recorded")


@pytest.fixture(scope="module")
def logging_hub(hub_pool: HubPool, recordings: Path) -> LocalHub:
    """A service that logs at info, asks the Hub on every request, records its turns, and is told the Hub's
    public URL is https."""
    return hub_pool.get(service_args=[*ECHO, "--log-level", "info", "--hub-auth-cache", "0",
                                      "--record", str(recordings)],
                        service_env={"JUPYTERHUB_PUBLIC_URL": "https://hub.example.org/"})


def test_an_https_public_url_makes_the_login_cookies_secure(logging_hub: LocalHub) -> None:
    with httpx.Client(timeout=30) as http:
        start = http.get(logging_hub.service_url + "/", headers={"sec-fetch-mode": "navigate"})
    assert start.status_code == 302
    (line,) = set_cookies(start).values()
    cookie_flags(line)
    assert "Secure" in line  # the proxy said http: the public URL is what the browser sees


def test_recordings_are_reachable_by_no_user(logging_hub: LocalHub, recordings: Path) -> None:
    alice, bob, admin = new_user(logging_hub), new_user(logging_hub), new_user(logging_hub, admin=True)
    answer = httpx.post(f"{logging_hub.service_url}/talkByStream", headers=auth(alice),
                        json=turn_body("alice's secret"))
    turn_id = answer.headers["x-nbchat-turn"]
    (recording,) = recordings.glob(f"*-{turn_id}.jsonl")
    assert re.search(f'"uid": ?"{alice.name}!', recording.read_text())  # the owner, for the operator
    for user in (alice, bob, admin):  # the service serves no file: not the owner's, not another's
        for path in (f"/{recording.name}", "/recordings", f"/recordings/{recording.name}", f"/record/{turn_id}",
                     f"/turns/{turn_id}", f"/turns/{turn_id}/recording"):
            got = httpx.get(logging_hub.service_url + path, headers=auth(user), timeout=30)
            assert got.status_code in (404, 405) and "secret" not in got.text, (path, got.status_code)


def test_a_token_in_the_url_is_never_logged(logging_hub: LocalHub) -> None:
    user = new_user(logging_hub)
    url = f"{logging_hub.service_url}/talkByStream?token={user.token}"
    assert httpx.post(url, json=turn_body("hello"), timeout=30).status_code == 200
    assert httpx.post(f"{logging_hub.service_url}/talkByStream?token={user.token}", content=b"{not json",
                      timeout=30).status_code == 400
    url = logging_hub.service_url.replace("http://", "ws://") + f"/websocket/u?token={user.token}"
    httpx.get(url.replace("ws://", "http://"), timeout=30)  # a WebSocket path asked over HTTP
    log = logging_hub.log.read_text(errors="replace")
    assert user.token not in log
    assert "Traceback" not in log


def test_a_revoked_token_is_refused_once_the_cache_lets_it_go(hub: LocalHub, logging_hub: LocalHub) -> None:
    for each, refused_now in ((logging_hub, True), (hub, False)):
        user = new_user(each)
        made = each.api("POST", f"/users/{user.name}/tokens", json={"note": "revoked"}).json()
        assert whoami(each, made["token"])["name"] == user.name
        each.api("DELETE", f"/users/{user.name}/tokens/{made['id']}")
        answer = httpx.get(f"{each.service_url}/v1/models", headers={"Authorization": f"token {made['token']}"})
        # --hub-auth-cache 0 asks the Hub every time; the default keeps the Hub's answer for 5 minutes
        assert answer.status_code == (401 if refused_now else 200), (each.service_args, answer.text)


def test_a_hub_that_is_down_gets_502_and_the_service_stays_up(make_hub: HubFactory) -> None:
    hub = make_hub()
    user = new_user(hub)  # a token the service has never seen: it must ask the Hub
    assert hub.proc is not None
    tree = [pid for pid in hub.processes() if pid != hub.proc.pid]
    os.kill(hub.proc.pid, signal.SIGKILL)  # the Hub alone: its proxy and the service live on
    hub.proc.wait()
    try:
        direct = f"http://127.0.0.1:{hub.service_port}{PREFIX.rstrip('/')}"
        answer = httpx.post(f"{direct}/talkByStream", headers=auth(user), json=turn_body("hello"), timeout=60)
        assert answer.status_code == 502, answer.text
        assert answer.json()["error"]["code"] == "hub_unavailable"
        assert "Traceback" not in answer.text and user.token not in answer.text
        assert httpx.get(f"{direct}/health", timeout=30).status_code == 200
        log = hub.log.read_text(errors="replace")
        assert "Traceback" not in log and user.token not in log
        assert re.search(r"cannot check a request's credentials with the Hub", log)
    finally:
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
