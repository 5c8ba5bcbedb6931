"""The annotation database's engine: the URL, the connection set-up, transactions, migrations
(Alembic), settings, and the errors every read and write may raise.

One URL selects the database: a file path or ``sqlite:///FILE`` (the default), or
``postgresql://user@host/db`` (driven by psycopg 3). Every write is one short transaction.
SQLite runs in WAL mode (readers never block the writer) with a busy timeout, and every write
transaction starts with ``BEGIN IMMEDIATE``: it takes the write lock up front and waits for it,
instead of failing with "database is locked" when a deferred read transaction later tries to
write. ``synchronous=FULL``: a label is on disk before its 201 is sent.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from .schema import settings

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_MS = 30_000
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


class Database:
    """The engine and its plumbing; ``accounts.Accounts`` and ``store.Store`` add the reads and writes."""

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

    # ------------------------------------------------------------ settings

    def setting(self, key: str, default: str | None = None, conn=None) -> str | None:
        if conn is None:
            with self.read() as c:
                return self.setting(key, default, c)
        row = conn.execute(select(settings.c.value).where(settings.c.key == key)).first()
        return row.value if row else default

    def _put(self, conn, key: str, value: str) -> None:
        if conn.execute(update(settings).where(settings.c.key == key).values(value=value)).rowcount == 0:
            conn.execute(insert(settings).values(key=key, value=value))
