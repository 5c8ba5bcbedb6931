"""The annotation database's tables (SQLAlchemy Core/ORM). Alembic migrations build them.

A change here needs a new migration in ``migrations/versions/``: a test compares this metadata
with a freshly migrated database (SQLite and PostgreSQL) and fails on any difference.

Times are naive UTC datetimes (SQLite has no time zones; both databases then store the same).
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (JSON, Boolean, Column, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Table,
                        Text, UniqueConstraint, true)

# Named constraints, so migrations can refer to them on every database (SQLite batch mode included).
metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

ROLES = ("admin", "annotator")
KINDS = ("pair", "demonstration")
CHOICES = ("a", "b", "tie")
# Assignment states: open (served, not answered), done (labelled), skipped (never served to this
# annotator again; the slot goes to someone else), expired (open too long; the slot was reclaimed).
STATUSES = ("open", "done", "skipped", "expired")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("role", String(20), nullable=False),
    Column("password_hash", String(200), nullable=True),  # argon2id; NULL: API token only
    Column("token_hash", String(64), nullable=False, unique=True),  # sha256 of the bearer token
    Column("guidelines_seen", Integer, nullable=False, default=0),  # version last acknowledged
    # False: `rlhfkit annotate deactivate`; no login, no token, no session (checked on every request)
    Column("active", Boolean, nullable=False, default=True, server_default=true()),
    Column("created_at", DateTime, nullable=False, default=utcnow),
)

tasks = Table(
    "tasks", metadata,
    Column("id", Integer, primary_key=True),
    Column("external_id", String(200), nullable=False, unique=True),  # the file's `id`
    Column("kind", String(20), nullable=False),
    Column("prompt", JSON, nullable=False),  # a string or a chat message list, as imported
    Column("response_a", Text, nullable=True),  # pairs
    Column("response_b", Text, nullable=True),
    Column("draft", Text, nullable=True),  # demonstrations: a response to edit (may be NULL)
    Column("meta", JSON, nullable=True),  # the record's `metadata` and unknown keys
    Column("gold", String(1), nullable=True),  # "a" | "b" for gold pairs
    Column("overlap", Integer, nullable=False),  # K: labels wanted from different annotators
    Column("assigned", Integer, nullable=False, default=0),  # open + done assignments (slots taken)
    Column("source", String(500), nullable=True),  # the imported file's name
    Column("created_at", DateTime, nullable=False, default=utcnow),
)
Index("ix_tasks_queue", tasks.c.gold, tasks.c.assigned, tasks.c.id)

assignments = Table(
    "assignments", metadata,
    Column("id", Integer, primary_key=True),
    Column("task_id", Integer, ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("status", String(10), nullable=False),
    Column("left", String(1), nullable=True),  # which response this annotator sees on the left
    Column("assigned_at", DateTime, nullable=False, default=utcnow),
    UniqueConstraint("task_id", "user_id"),  # nobody gets the same task twice
)
Index("ix_assignments_user_status", assignments.c.user_id, assignments.c.status)

labels = Table(
    "labels", metadata,
    Column("id", Integer, primary_key=True),
    Column("task_id", Integer, ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("choice", String(3), nullable=True),  # "a" | "b" | "tie" of the imported order; pairs
    Column("strength", String(20), nullable=True),  # slightly_better | better | much_better
    Column("margin", Float, nullable=True),
    Column("left", String(1), nullable=True),  # the response that was shown on the left
    Column("comment", Text, nullable=True),
    Column("completion", Text, nullable=True),  # demonstrations
    Column("created_at", DateTime, nullable=False, default=utcnow),
    # One label per task and annotator: a repeated submission returns the stored label.
    UniqueConstraint("task_id", "user_id"),
)
Index("ix_labels_user", labels.c.user_id, labels.c.id)

settings = Table(
    "settings", metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
)

sessions = Table(
    "sessions", metadata,
    Column("id", String(64), primary_key=True),  # sha256 of the cookie value
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", DateTime, nullable=False, default=utcnow),
    Column("expires_at", DateTime, nullable=False),
)
