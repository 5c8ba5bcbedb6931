"""Annotators and admins: users, API tokens, passwords, browser sessions, account changes (each
effective at the next request), and which guidelines version each user has read."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from .auth import digest, hash_password, new_secret, verify_password
from .db import Conflict, Database, Invalid, NotFound, storable
from .schema import ROLES, sessions, users, utcnow

SESSION_TTL = timedelta(hours=12)


class Accounts(Database):
    def add_user(self, name: str, role: str, password: str | None = None) -> tuple[int, str]:
        """Create a user; returns (id, API token). The token is shown once: only its hash is kept."""
        name = (name or "").strip()
        if not name or len(name) > 200 or not storable(name):
            raise Invalid("a user name needs 1 to 200 characters, none of them NUL")
        if role not in ROLES:
            raise Invalid(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        token = new_secret()
        row = {"name": name, "role": role, "token_hash": digest(token), "guidelines_seen": 0, "created_at": utcnow(),
               "password_hash": hash_password(password) if password else None}
        try:
            with self.write() as conn:
                if conn.execute(select(users.c.id).where(users.c.name == name)).first():
                    raise Conflict(f"a user named {name!r} exists")
                uid = conn.execute(insert(users).values(**row)).inserted_primary_key[0]
        except IntegrityError as e:
            raise Conflict(f"a user named {name!r} exists") from e
        return uid, token

    def user_by_token(self, token: str):
        """The active user the token belongs to, or None (read on every request: a revoked token or a
        deactivated user is refused at once)."""
        with self.read() as conn:
            return conn.execute(select(users).where(users.c.token_hash == digest(token), users.c.active)).first()

    def user(self, user_id: int):
        with self.read() as conn:
            return conn.execute(select(users).where(users.c.id == user_id)).first()

    def users(self) -> list:
        with self.read() as conn:
            return list(conn.execute(select(users).order_by(users.c.id)))

    def login(self, name: str, password: str):
        """The active user if the password matches; None otherwise (unknown names, names no database
        can hold and deactivated users cost a hash too, so the timing reveals nothing)."""
        row = None
        if storable(name):
            with self.read() as conn:
                row = conn.execute(select(users).where(users.c.name == name)).first()
        ok = verify_password(row.password_hash if row else _dummy_hash(), password)
        return row if row is not None and row.active and ok else None

    # ------------------------------------------------------------ account changes (CLI; effective at once)

    def _named(self, conn, name: str):
        row = conn.execute(select(users.c.id).where(users.c.name == name)).first() if storable(name) else None
        if row is None:
            raise NotFound(f"no user named {name!r}")
        return row.id

    def revoke_token(self, name: str) -> str:
        """Replace the user's API token; the old one is refused from the next request. Returns the new
        token (shown once; only its hash is kept)."""
        token = new_secret()
        with self.write() as conn:
            conn.execute(update(users).where(users.c.id == self._named(conn, name)).values(token_hash=digest(token)))
        return token

    def set_password(self, name: str, password: str) -> None:
        """Set a new browser password and end the user's browser sessions."""
        if not password:
            raise Invalid("the new password is empty")
        hashed = hash_password(password)
        with self.write() as conn:
            uid = self._named(conn, name)
            conn.execute(update(users).where(users.c.id == uid).values(password_hash=hashed))
            conn.execute(delete(sessions).where(sessions.c.user_id == uid))

    def set_active(self, name: str, active: bool) -> None:
        """Deactivate (no login, token or session works; the labels stay) or reactivate a user."""
        with self.write() as conn:
            uid = self._named(conn, name)
            conn.execute(update(users).where(users.c.id == uid).values(active=active))
            if not active:
                conn.execute(delete(sessions).where(sessions.c.user_id == uid))

    # ------------------------------------------------------------ browser sessions

    def create_session(self, user_id: int) -> tuple[str, str]:
        """(cookie value, CSRF token) of a new session."""
        sid, csrf = new_secret(), new_secret()
        now = utcnow()
        with self.write() as conn:
            conn.execute(delete(sessions).where(sessions.c.expires_at < now))
            conn.execute(insert(sessions).values(id=digest(sid), user_id=user_id, csrf=csrf, created_at=now,
                                                 expires_at=now + SESSION_TTL))
        return sid, csrf

    def session(self, sid: str):
        """(user row, CSRF token) of a live session, or None."""
        with self.read() as conn:
            row = conn.execute(select(sessions.c.csrf, sessions.c.expires_at, sessions.c.user_id)
                               .where(sessions.c.id == digest(sid))).first()
            if row is None or row.expires_at < utcnow():
                return None
            user = conn.execute(select(users).where(users.c.id == row.user_id, users.c.active)).first()
        return (user, row.csrf) if user else None

    def end_session(self, sid: str) -> None:
        with self.write() as conn:
            conn.execute(delete(sessions).where(sessions.c.id == digest(sid)))

    # ------------------------------------------------------------ guidelines

    def guidelines(self) -> tuple[str, int]:
        """(markdown, version); version 0 means none were set."""
        with self.read() as conn:
            return self.setting("guidelines", "", conn), int(self.setting("guidelines_version", "0", conn))

    def set_guidelines(self, markdown: str) -> int:
        """Replace the guidelines; annotators see the new version before their next task."""
        with self.write() as conn:
            version = int(self.setting("guidelines_version", "0", conn)) + 1
            self._put(conn, "guidelines", markdown)
            self._put(conn, "guidelines_version", str(version))
        return version

    def acknowledge_guidelines(self, user_id: int, version: int) -> None:
        """Record that the user read ``version``; only the current version can be acknowledged (an
        acknowledged future version would let the user skip the next change unread)."""
        with self.write() as conn:
            current = int(self.setting("guidelines_version", "0", conn))
            if version != current:
                raise Conflict(f"version {version} is not the current guidelines version ({current}): "
                               f"read version {current}, then acknowledge it")
            conn.execute(update(users).where(users.c.id == user_id).values(guidelines_seen=version))


_DUMMY: list[str] = []


def _dummy_hash() -> str:
    """A hash to verify against for unknown user names, so a login's timing does not reveal them."""
    if not _DUMMY:
        _DUMMY.append(hash_password(new_secret()))
    return _DUMMY[0]
