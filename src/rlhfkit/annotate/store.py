"""The annotation database: engine set-up, migrations, and every read and write.

One URL selects the database: a file path or ``sqlite:///FILE`` (the default), or
``postgresql://user@host/db`` (driven by psycopg 3). Every write is one short transaction, and
the rules that must survive concurrency live in the database itself:

- ``UNIQUE(task_id, user_id)`` on labels: a repeated submission finds the stored label (200)
  instead of adding a second one; on assignments: nobody gets the same task twice.
- At most K annotators per task: ``UPDATE tasks SET assigned = assigned + 1 WHERE id = :id AND
  assigned < overlap`` either takes a slot or touches no row — atomic on both databases. An answer
  whose assignment expired (its slot went back to the queue) takes a slot the same way or is
  refused (``Late``, 409): a task never has more than K labels.

SQLite runs in WAL mode (readers never block the writer) with a busy timeout, and every write
transaction starts with ``BEGIN IMMEDIATE``: it takes the write lock up front and waits for it,
instead of failing with "database is locked" when a deferred read transaction later tries to
write. ``synchronous=FULL``: a label is on disk before its 201 is sent.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import and_, create_engine, delete, event, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from . import assignment
from .auth import digest, hash_password, new_secret, verify_password
from .records import TaskRecord
from .schema import CHOICES, ROLES, assignments, labels, metadata, sessions, settings, tasks, users, utcnow

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_MS = 30_000
# Strength of a preference -> `margin` for the Bradley-Terry loss, as in Llama 2 (Touvron et al.
# 2023, sec. 3.2.2 and table 28): "slightly better" 1/3, "better" 2/3, "significantly better" 1.
MARGINS = {"slightly_better": 1 / 3, "better": 2 / 3, "much_better": 1.0}
SESSION_TTL = timedelta(hours=12)
ASSIGNMENT_TTL = timedelta(hours=2)
ATTEMPTS = 8  # tries of one request when a concurrent one took the same slot


class StoreError(Exception):
    """A request the store refuses; ``status`` is the HTTP status the API answers with."""

    status = 400


class NotFound(StoreError):
    status = 404


class Forbidden(StoreError):
    status = 403


class Conflict(StoreError):
    status = 409


class Invalid(StoreError):
    status = 422


class Late(Conflict):
    """An answer whose assignment expired and whose task has no free slot left (K labels at most)."""


def normalize_url(db: str) -> str:
    """A file path or URL -> an SQLAlchemy URL (``postgresql://`` is driven by psycopg 3)."""
    if "://" not in db:
        return f"sqlite:///{Path(db).expanduser().resolve()}"
    scheme, rest = db.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return db


def make_engine(url: str):
    if url.startswith("sqlite"):
        if url in ("sqlite://", "sqlite:///:memory:"):
            raise ValueError("an in-memory SQLite database is private to one connection; give a file path")
        engine = create_engine(url, pool_size=8, max_overflow=24, pool_timeout=120,
                               connect_args={"timeout": SQLITE_BUSY_MS / 1000, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # transactions are begun by the "begin" hook below
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("readonly") else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_size=10, max_overflow=30, pool_timeout=120, pool_pre_ping=True)


def _other(side: str) -> str:
    return "b" if side == "a" else "a"


def _to_canonical(shown: str, left: str) -> str:
    """The caller's choice ("a" = left, "b" = right, "tie") -> the imported response it names."""
    if shown == "tie":
        return "tie"
    return left if shown == "a" else _other(left)


def _to_shown(choice: str | None, left: str | None) -> str | None:
    if choice in (None, "tie") or left is None:
        return choice
    return "a" if choice == left else "b"


@dataclass
class ImportReport:
    added: int
    unchanged: int
    gold: int
    kind: str


class Store:
    def __init__(self, db: str, migrate: bool = True):
        self.url = normalize_url(db)
        self.engine = make_engine(self.url)
        self._readonly = self.engine.execution_options(readonly=True)
        self._lock = threading.Lock() if self.url.startswith("sqlite") else None
        if migrate:
            self.migrate()

    # ------------------------------------------------------------ plumbing

    @contextmanager
    def write(self):
        """A connection in a write transaction (committed on success, rolled back on error).

        SQLite allows one writer at a time. Its busy handler polls with sleeps of up to 100 ms,
        which gives a long latency tail when dozens of threads wait for the lock, so this process's
        writers queue on a Python lock instead; the busy timeout still covers other processes
        (an import while the server runs)."""
        if self._lock is None:
            with self.engine.begin() as conn:
                yield conn
        else:
            with self._lock, self.engine.begin() as conn:
                yield conn

    def read(self):
        return self._readonly.begin()

    def close(self) -> None:
        self.engine.dispose()

    def _alembic(self, conn):
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        return cfg

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to ``revision`` (Alembic); run by serve, import, add-user and export."""
        from alembic import command

        with self.engine.begin() as conn:
            command.upgrade(self._alembic(conn), revision)

    def downgrade(self, revision: str) -> None:
        from alembic import command

        with self.engine.begin() as conn:
            command.downgrade(self._alembic(conn), revision)

    def revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def _retry(self, fn):
        """Run ``fn(conn)`` in a write transaction; again when a concurrent request won a race."""
        for attempt in range(ATTEMPTS):
            try:
                with self.write() as conn:
                    return fn(conn)
            except IntegrityError:
                if attempt == ATTEMPTS - 1:
                    raise
            except OperationalError as e:  # PostgreSQL: serialization failure or deadlock
                transient = "deadlock" in str(e).lower() or "serializ" in str(e).lower()
                if attempt == ATTEMPTS - 1 or not transient:
                    raise

    # ------------------------------------------------------------ users

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

    # ------------------------------------------------------------ settings and guidelines

    def setting(self, key: str, default: str | None = None, conn=None) -> str | None:
        if conn is None:
            with self.read() as c:
                return self.setting(key, default, c)
        row = conn.execute(select(settings.c.value).where(settings.c.key == key)).first()
        return row.value if row else default

    def _put(self, conn, key: str, value: str) -> None:
        if conn.execute(update(settings).where(settings.c.key == key).values(value=value)).rowcount == 0:
            conn.execute(insert(settings).values(key=key, value=value))

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

    def gold_rate(self, conn=None) -> float:
        return float(self.setting("gold_rate", "0", conn))

    # ------------------------------------------------------------ import

    def import_tasks(self, records: list[TaskRecord], overlap: int, gold_rate: float | None = None,
                     source: str | None = None) -> ImportReport:
        """Add validated records in ONE transaction: all of them or, on any error, none.

        A record whose id is already in the database is skipped when it is identical (importing
        the same file twice adds nothing) and refused when it differs.
        """
        if overlap < 1:
            raise Invalid(f"--overlap must be at least 1, got {overlap}")
        if gold_rate is not None and not 0 <= gold_rate <= 1:
            raise Invalid(f"--gold-rate must be between 0 and 1, got {gold_rate}")
        kind = records[0].kind if records else "pair"
        added = unchanged = gold = 0
        now = utcnow()
        with self.write() as conn:
            known = {}
            ids = [r.external_id for r in records]
            for start in range(0, len(ids), 500):
                for row in conn.execute(select(tasks).where(tasks.c.external_id.in_(ids[start:start + 500]))):
                    known[row.external_id] = row
            rows = []
            for r in records:
                row = {"external_id": r.external_id, "kind": r.kind, "prompt": r.prompt, "response_a": r.response_a,
                       "response_b": r.response_b, "draft": r.draft, "meta": r.meta or None, "gold": r.gold,
                       "overlap": overlap, "assigned": 0, "source": source, "created_at": now}
                old = known.get(r.external_id)
                if old is not None:
                    same = all(getattr(old, k) == row[k] for k in ("kind", "prompt", "response_a", "response_b",
                                                                   "draft", "gold"))
                    if not same:
                        raise Conflict(f"{r.where}: id {r.external_id!r} is already in the database with "
                                       "different content")
                    unchanged += 1
                    continue
                rows.append(row)
                gold += r.gold is not None
            for start in range(0, len(rows), 500):
                conn.execute(insert(tasks), rows[start:start + 500])
            added = len(rows)
            if gold_rate is not None:
                self._put(conn, "gold_rate", repr(float(gold_rate)))
        return ImportReport(added, unchanged, gold, kind)

    # ------------------------------------------------------------ assignment

    def next_task(self, user_id: int, kind: str | None = None, progress: bool = True) -> dict | None:
        """The caller's current task (an open assignment), or a new one; None when nothing is left.

        ``progress`` adds ``{done, remaining}`` (a count over the task table: the pages show it,
        API clients ask for it)."""
        task = self._retry(lambda conn: self._next(conn, user_id, kind))
        if task is not None and progress:
            task["progress"] = self.progress(user_id)
        return task

    def _next(self, conn, user_id: int, kind: str | None):
        q = (select(assignments.c.task_id, assignments.c.left).where(assignments.c.user_id == user_id,
                                                                     assignments.c.status == "open")
             .order_by(assignments.c.assigned_at.desc(), assignments.c.id.desc()))
        if kind:
            q = q.join(tasks, tasks.c.id == assignments.c.task_id).where(tasks.c.kind == kind)
        current = conn.execute(q.limit(1)).first()
        if current is not None:
            return self._view(conn, current.task_id, current.left, user_id)
        for _ in range(2):
            task_id = self._allocate(conn, user_id, kind)
            if task_id is not None:
                row = conn.execute(select(assignments.c.left).where(assignments.c.task_id == task_id,
                                                                    assignments.c.user_id == user_id)).first()
                return self._view(conn, task_id, row.left, user_id)
            if not self._reclaim(conn):
                return None
        return None

    def _allocate(self, conn, user_id: int, kind: str | None) -> int | None:
        mine = exists().where(assignments.c.task_id == tasks.c.id, assignments.c.user_id == user_id)
        if kind in (None, "pair"):
            served, gold_served = conn.execute(
                select(func.count(), func.count(tasks.c.gold)).select_from(assignments)
                .join(tasks, tasks.c.id == assignments.c.task_id)
                .where(assignments.c.user_id == user_id, assignments.c.status != "expired")).one()
            if assignment.gold_due(user_id, served, gold_served, self.gold_rate(conn)):
                golds = [r.id for r in conn.execute(select(tasks.c.id).where(tasks.c.gold.is_not(None), ~mine)
                                                    .order_by(tasks.c.id).limit(50))]
                if golds:
                    task_id = assignment.pick(golds)
                    conn.execute(update(tasks).where(tasks.c.id == task_id).values(assigned=tasks.c.assigned + 1))
                    self._assign(conn, task_id, user_id)
                    return task_id
        q = select(tasks.c.id).where(tasks.c.gold.is_(None), tasks.c.assigned < tasks.c.overlap, ~mine)
        if kind:
            q = q.where(tasks.c.kind == kind)
        # The oldest tasks first, so pairs complete their K labels early. PostgreSQL: take a row no
        # concurrent transaction holds (SKIP LOCKED, the job-queue idiom), so annotators never wait
        # on each other's row locks. Otherwise (SQLite serialises writers anyway, or every candidate
        # is locked this instant): a small random pick among the first few, each tried atomically.
        if self.engine.dialect.name == "postgresql":
            row = conn.execute(q.order_by(tasks.c.id).limit(1).with_for_update(skip_locked=True, of=tasks)).first()
            if row is not None:
                conn.execute(update(tasks).where(tasks.c.id == row.id).values(assigned=tasks.c.assigned + 1))
                self._assign(conn, row.id, user_id)
                return row.id
        candidates = [r.id for r in conn.execute(q.order_by(tasks.c.id).limit(16))]
        while candidates:
            task_id = assignment.pick(candidates[:4])
            candidates.remove(task_id)
            took = conn.execute(update(tasks).where(tasks.c.id == task_id, tasks.c.assigned < tasks.c.overlap)
                                .values(assigned=tasks.c.assigned + 1)).rowcount
            if took == 1:
                self._assign(conn, task_id, user_id)
                return task_id
        return None

    def _assign(self, conn, task_id: int, user_id: int) -> None:
        conn.execute(insert(assignments).values(task_id=task_id, user_id=user_id, status="open",
                                                left=assignment.draw_left(), assigned_at=utcnow()))

    def _reclaim(self, conn) -> int:
        """Give the slots of assignments left open longer than ASSIGNMENT_TTL to other annotators."""
        cutoff = utcnow() - ASSIGNMENT_TTL
        stale = conn.execute(select(assignments.c.id, assignments.c.task_id)
                             .where(assignments.c.status == "open", assignments.c.assigned_at < cutoff)
                             .limit(100)).all()
        n = 0
        for row in stale:
            if conn.execute(update(assignments).where(assignments.c.id == row.id, assignments.c.status == "open")
                            .values(status="expired")).rowcount:
                conn.execute(update(tasks).where(tasks.c.id == row.task_id).values(assigned=tasks.c.assigned - 1))
                n += 1
        return n

    def _view(self, conn, task_id: int, left: str | None, user_id: int) -> dict:
        t = conn.execute(select(tasks).where(tasks.c.id == task_id)).one()
        view = {"task_id": t.id, "kind": t.kind, "prompt": t.prompt}
        if t.kind == "pair":
            shown = (t.response_a, t.response_b) if left != "b" else (t.response_b, t.response_a)
            view.update(a=shown[0], b=shown[1])
        else:
            view.update(draft=t.draft)
        return view

    # ------------------------------------------------------------ answers

    def submit_label(self, user_id: int, task_id: int, choice: str, strength: str | None = None,
                     comment: str | None = None) -> tuple[dict, bool]:
        """Store a preference; (label, created). ``choice`` is in the caller's order: "a" = left.

        A second submission of the same task by the same annotator returns the stored label
        (created False) and changes nothing: clients may retry freely.
        """
        if choice not in CHOICES:
            raise Invalid(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
        if strength is not None and strength not in MARGINS:
            raise Invalid(f"strength must be one of {', '.join(MARGINS)} or null, got {strength!r}")
        if choice == "tie" and strength is not None:
            raise Invalid("strength says how much better the chosen response is; a tie has none")
        return self._retry(lambda conn: self._answer(conn, user_id, task_id, "pair", {
            "choice": choice, "strength": strength, "margin": MARGINS.get(strength), "comment": comment or None}))

    def submit_demonstration(self, user_id: int, task_id: int, completion: str) -> tuple[dict, bool]:
        if not isinstance(completion, str) or not completion.strip():
            raise Invalid("completion must be a non-empty string")
        return self._retry(lambda conn: self._answer(conn, user_id, task_id, "demonstration",
                                                     {"completion": completion}))

    def _answer(self, conn, user_id: int, task_id: int, kind: str, values: dict) -> tuple[dict, bool]:
        old = conn.execute(select(labels).where(labels.c.task_id == task_id, labels.c.user_id == user_id)).first()
        a = conn.execute(select(assignments).where(assignments.c.task_id == task_id,
                                                   assignments.c.user_id == user_id)).first()
        if old is not None:
            return self._label_view(old, a.left if a else None), False
        task = conn.execute(select(tasks.c.kind, tasks.c.gold).where(tasks.c.id == task_id)).first()
        if task is None:
            raise NotFound(f"no task {task_id}")
        if a is None:
            raise Forbidden(f"task {task_id} is not assigned to you")
        if task.kind != kind:
            where = "/api/labels" if task.kind == "pair" else "/api/demonstrations"
            raise Invalid(f"task {task_id} is a {task.kind} task: answer it with POST {where}")
        if a.status == "skipped":
            raise Conflict(f"you skipped task {task_id}")
        # Conditional, so an assignment that a concurrent GET /api/next expired meanwhile is seen as expired.
        if not conn.execute(update(assignments).where(assignments.c.id == a.id, assignments.c.status.in_(
                ("open", "done"))).values(status="done")).rowcount:
            self._retake_slot(conn, task_id, task.gold is not None)
            conn.execute(update(assignments).where(assignments.c.id == a.id).values(status="done"))
        if kind == "pair":
            values = {**values, "choice": _to_canonical(values["choice"], a.left or "a"), "left": a.left or "a"}
        row = {"task_id": task_id, "user_id": user_id, "created_at": utcnow(), **values}
        label_id = conn.execute(insert(labels).values(**row)).inserted_primary_key[0]
        return self._label_view(conn.execute(select(labels).where(labels.c.id == label_id)).one(), a.left), True

    @staticmethod
    def _retake_slot(conn, task_id: int, gold: bool) -> None:
        """A late answer (its assignment expired and its slot went back to the queue) counts only if
        a slot is still free, taken atomically as GET /api/next takes one: a task never ends with more
        than K labels. Gold pairs have no K (every annotator gets them)."""
        cond = tasks.c.id == task_id if gold else and_(tasks.c.id == task_id, tasks.c.assigned < tasks.c.overlap)
        if not conn.execute(update(tasks).where(cond).values(assigned=tasks.c.assigned + 1)).rowcount:
            hours = ASSIGNMENT_TTL.total_seconds() / 3600
            raise Late(f"task {task_id}: your assignment expired (open longer than {hours:g} h) and the task "
                       "went to other annotators, so this answer was not saved")

    @staticmethod
    def _label_view(row, left: str | None) -> dict:
        view = {"label_id": row.id, "task_id": row.task_id}
        if row.completion is not None:
            view["completion"] = row.completion
        else:
            view.update(choice=_to_shown(row.choice, left), strength=row.strength, margin=row.margin,
                        comment=row.comment)
        return view

    def skip(self, user_id: int, task_id: int) -> None:
        """Pass a task on: its slot goes to another annotator and it never comes back to this one."""
        def run(conn):
            a = conn.execute(select(assignments).where(assignments.c.task_id == task_id,
                                                       assignments.c.user_id == user_id)).first()
            if a is None:
                raise Forbidden(f"task {task_id} is not assigned to you")
            if a.status == "done":
                raise Conflict(f"task {task_id} is already answered; undo it first")
            if a.status == "open" and conn.execute(
                    update(assignments).where(assignments.c.id == a.id, assignments.c.status == "open")
                    .values(status="skipped")).rowcount:
                conn.execute(update(tasks).where(tasks.c.id == task_id).values(assigned=tasks.c.assigned - 1))
        self._retry(run)

    def undo(self, user_id: int) -> int | None:
        """Delete the caller's latest answer and reopen its task (served next); the task id or None."""
        def run(conn):
            last = conn.execute(select(labels.c.id, labels.c.task_id).where(labels.c.user_id == user_id)
                                .order_by(labels.c.id.desc()).limit(1)).first()
            if last is None:
                return None
            conn.execute(delete(labels).where(labels.c.id == last.id))
            conn.execute(update(assignments).where(assignments.c.task_id == last.task_id,
                                                   assignments.c.user_id == user_id)
                         .values(status="open", assigned_at=utcnow()))
            return last.task_id
        return self._retry(run)

    def progress(self, user_id: int) -> dict:
        with self.read() as conn:
            return self._progress(conn, user_id)

    def _progress(self, conn, user_id: int) -> dict:
        done = conn.execute(select(func.count()).select_from(labels).where(labels.c.user_id == user_id)).scalar()
        mine = exists().where(assignments.c.task_id == tasks.c.id, assignments.c.user_id == user_id)
        open_ = conn.execute(select(func.count()).select_from(assignments).where(
            assignments.c.user_id == user_id, assignments.c.status == "open")).scalar()
        free = conn.execute(select(func.count()).select_from(tasks).where(
            tasks.c.gold.is_(None), tasks.c.assigned < tasks.c.overlap, ~mine)).scalar()
        return {"done": done, "remaining": open_ + free}

    # ------------------------------------------------------------ reading it all back

    def label_rows(self) -> list[dict]:
        """Every label joined with its task and annotator (for statistics and export)."""
        q = (select(labels.c.task_id, labels.c.choice, labels.c.margin, labels.c.strength, labels.c.left,
                    labels.c.completion, labels.c.comment, labels.c.created_at, users.c.name.label("annotator"),
                    tasks.c.kind, tasks.c.gold, tasks.c.external_id)
             .join(users, users.c.id == labels.c.user_id).join(tasks, tasks.c.id == labels.c.task_id)
             .order_by(labels.c.task_id, labels.c.id))
        with self.read() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def task_rows(self, kind: str | None = None) -> dict[int, dict]:
        q = select(tasks.c.id, tasks.c.external_id, tasks.c.kind, tasks.c.prompt, tasks.c.response_a,
                   tasks.c.response_b, tasks.c.gold, tasks.c.overlap, tasks.c.meta)
        if kind:
            q = q.where(tasks.c.kind == kind)
        with self.read() as conn:
            return {r.id: dict(r._mapping) for r in conn.execute(q.order_by(tasks.c.id))}

    def counts(self) -> dict:
        with self.read() as conn:
            n_tasks = dict(conn.execute(select(tasks.c.kind, func.count()).group_by(tasks.c.kind)).all())
            gold = conn.execute(select(func.count()).select_from(tasks).where(tasks.c.gold.is_not(None))).scalar()
            per_task = select(labels.c.task_id, func.count().label("n")).group_by(labels.c.task_id).subquery()
            complete = conn.execute(select(func.count()).select_from(per_task.join(
                tasks, tasks.c.id == per_task.c.task_id)).where(and_(per_task.c.n >= tasks.c.overlap,
                                                                    tasks.c.gold.is_(None)))).scalar()
            open_ = conn.execute(select(func.count()).select_from(assignments)
                                 .where(assignments.c.status == "open")).scalar()
        return {"pairs": n_tasks.get("pair", 0), "demonstrations": n_tasks.get("demonstration", 0),
                "gold_pairs": gold, "tasks_complete": complete, "open_assignments": open_}


def storable(text: str) -> bool:
    """Whether both databases can store ``text``: PostgreSQL refuses NUL characters, and lone
    surrogates have no UTF-8 encoding."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_DUMMY: list[str] = []


def _dummy_hash() -> str:
    """A hash to verify against for unknown user names, so a login's timing does not reveal them."""
    if not _DUMMY:
        _DUMMY.append(hash_password(new_secret()))
    return _DUMMY[0]


__all__ = ["Store", "StoreError", "NotFound", "Forbidden", "Conflict", "Invalid", "Late", "MARGINS", "normalize_url",
           "metadata", "storable"]
