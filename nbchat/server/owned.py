"""Turns that belong to a user: what each request of a server with users sees of the turn store.

Under a JupyterHub every request comes from a Hub user (:mod:`.hub` puts a
:class:`HubUser` on its scope). :func:`store_for` then hands the routes a
:class:`UserTurns` view instead of the whole store: the user's uids are
namespaced by the user's name, so the same uid of two users names two turns
(and a new turn on one does not supersede the other's), and a turn id another
user holds is as unknown as one never made: it cannot be read, resumed,
started or interrupted. The owner travels in the turn's uid, the one field a
turn carries wherever it lives, so the rule holds unchanged with a shared store
and several processes. A user with the admin scope may read and stop any
turn by its id.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from urllib.parse import quote

from starlette.requests import HTTPConnection

from ..wire.errors import ResumeError
from ..wire.events import TurnRequest
from .context import context_of
from .fairshare import UserQuota
from .store import Reader, TurnInfo, TurnStore

#: where the authenticated user goes on a request's ASGI scope
USER_KEY = "nbchat.user"
#: separates the owner from the user's own uid; a uid-less turn's own mark comes after ANONYMOUS
#: (both are escaped in the owner's part, so a name cannot forge another's namespace)
SEPARATOR = "/"
ANONYMOUS = "!"


@dataclass(frozen=True)
class HubUser:
    """A user a request comes from; ``admin`` may read and stop every user's turns."""

    name: str
    admin: bool = False


def user_of(conn: HTTPConnection) -> HubUser | None:
    """The user of a request or WebSocket (None when the server has no users: the token is all)."""
    user: HubUser | None = conn.scope.get(USER_KEY)
    return user


def store_for(conn: HTTPConnection) -> TurnStore:
    """The turns a request may see: all of them, or under a Hub its user's."""
    context = context_of(conn)
    user = user_of(conn)
    if user is None:
        return context.store
    return UserTurns(context.store, user, context.fair.quota if context.fair is not None else None)


def owner_of(uid: str | None) -> str | None:
    """The namespace a stored uid belongs to (None: no owner, a turn made without users)."""
    if uid is None:
        return None
    cut = min((i for i in (uid.find(SEPARATOR), uid.find(ANONYMOUS)) if i >= 0), default=-1)
    return uid[:cut] if cut >= 0 else None


class UserTurns(TurnStore):
    """One user's view of a store (see the module's doc)."""

    def __init__(self, store: TurnStore, user: HubUser, quota: UserQuota | None = None) -> None:
        self.store = store
        self.manager = store.manager
        self.user = user
        self.quota = quota
        self.namespace = quote(user.name, safe="")

    def own(self, uid: str) -> str:
        return f"{self.namespace}{SEPARATOR}{uid}"

    def mine(self, info: TurnInfo | None) -> TurnInfo | None:
        """The turn as its owner (or an admin) sees it: with the user's own uid; None for another's."""
        if info is None or (owner_of(info.uid) != self.namespace and not self.user.admin):
            return None
        uid = info.uid.partition(SEPARATOR)[2] if info.uid and SEPARATOR in info.uid else None
        return dataclasses.replace(info, uid=uid or None)

    async def create(self, request: TurnRequest, uid: str | None = None, *, start: bool = True) -> TurnInfo:
        uid = uid if uid is not None else request.uid
        hold = None
        if self.quota is not None:
            # a shared store counts every process's turns; else this process's count is the whole count
            hold = await self.store.hold_user_turn(self.namespace, self.quota)
            if hold is None:
                live = [t for t in self.manager.running() if owner_of(t.uid) == self.namespace]
                self.quota.admit(self.namespace, live)
        # a turn without a uid gets one of its own, so it is owned too (and supersedes nothing)
        stored = self.own(uid) if uid is not None else f"{self.namespace}{ANONYMOUS}{secrets.token_urlsafe(9)}"
        try:
            made = await self.store.create(dataclasses.replace(request, uid=stored), stored, start=start)
        except Exception:
            if hold is not None:
                await hold.release()
            raise
        if hold is not None:
            await hold.keep(made.id)
        info = self.mine(made)
        assert info is not None
        return info

    async def get(self, turn_id: str) -> TurnInfo | None:
        return self.mine(await self.store.get(turn_id))

    async def latest(self, uid: str) -> TurnInfo | None:
        return self.mine(await self.store.latest(self.own(uid)))

    async def open(self, turn_id: str, after: int) -> Reader:
        if await self.get(turn_id) is None:
            raise ResumeError(f"unknown turn {turn_id[:40]!r}: it may have expired ({self.manager.retention_note()})")
        return await self.store.open(turn_id, after)

    async def interrupt(self, turn_id: str) -> TurnInfo | None:
        if await self.get(turn_id) is None:
            return None
        return self.mine(await self.store.interrupt(turn_id))
