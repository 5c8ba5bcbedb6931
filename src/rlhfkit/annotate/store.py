"""The annotation tasks: import, assignment, answers, and reading it all back (``Store``, built on
``accounts.Accounts`` and ``db.Database``).

The rules that must survive concurrency live in the database itself:

- ``UNIQUE(task_id, user_id)`` on labels: a repeated submission finds the stored label (200)
  instead of adding a second one; on assignments: nobody gets the same task twice.
- At most K annotators per task: ``UPDATE tasks SET assigned = assigned + 1 WHERE id = :id AND
  assigned < overlap`` either takes a slot or touches no row — atomic on both databases. An answer
  whose assignment expired (its slot went back to the queue) takes a slot the same way or is
  refused (``Late``, 409): a task never has more than K labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, delete, exists, func, insert, select, true, update

from . import assignment
from .accounts import Accounts
from .db import Conflict, Forbidden, Invalid, Late, NotFound
from .records import TaskRecord
from .schema import CHOICES, assignments, labels, tasks, users, utcnow

# Strength of a preference -> `margin` for the Bradley-Terry loss, as in Llama 2 (Touvron et al.
# 2023, sec. 3.2.2 and table 28): "slightly better" 1/3, "better" 2/3, "significantly better" 1.
MARGINS = {"slightly_better": 1 / 3, "better": 2 / 3, "much_better": 1.0}
ASSIGNMENT_TTL = timedelta(hours=2)


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


class Store(Accounts):
    """Every read and write of the annotation database: ``Store(db)`` opens it (and migrates)."""

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

    def label_rows(self, source: str | None = None) -> list[dict]:
        """Every label joined with its task and annotator (for statistics and export); ``source``:
        only the labels of tasks imported under that name (one round of a pipeline)."""
        q = (select(labels.c.task_id, labels.c.choice, labels.c.margin, labels.c.strength, labels.c.left,
                    labels.c.completion, labels.c.comment, labels.c.created_at, users.c.name.label("annotator"),
                    tasks.c.kind, tasks.c.gold, tasks.c.external_id)
             .join(users, users.c.id == labels.c.user_id).join(tasks, tasks.c.id == labels.c.task_id)
             .order_by(labels.c.task_id, labels.c.id))
        if source is not None:
            q = q.where(tasks.c.source == source)
        with self.read() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def task_rows(self, kind: str | None = None, source: str | None = None) -> dict[int, dict]:
        q = select(tasks.c.id, tasks.c.external_id, tasks.c.kind, tasks.c.prompt, tasks.c.response_a,
                   tasks.c.response_b, tasks.c.gold, tasks.c.overlap, tasks.c.meta)
        if kind:
            q = q.where(tasks.c.kind == kind)
        if source is not None:
            q = q.where(tasks.c.source == source)
        with self.read() as conn:
            return {r.id: dict(r._mapping) for r in conn.execute(q.order_by(tasks.c.id))}

    def counts(self, source: str | None = None) -> dict:
        """Task counts; ``labels_missing``: labels still wanted (K minus those given, per pair, gold
        pairs left out). ``source``: only the tasks imported under that name."""
        mine = tasks.c.source == source if source is not None else true()
        with self.read() as conn:
            n_tasks = dict(conn.execute(select(tasks.c.kind, func.count()).where(mine).group_by(tasks.c.kind)).all())
            gold = conn.execute(select(func.count()).select_from(tasks).where(tasks.c.gold.is_not(None), mine)).scalar()
            per_task = select(labels.c.task_id, func.count().label("n")).group_by(labels.c.task_id).subquery()
            have = conn.execute(select(tasks.c.kind, tasks.c.overlap, func.coalesce(per_task.c.n, 0))
                                .select_from(tasks.outerjoin(per_task, per_task.c.task_id == tasks.c.id))
                                .where(tasks.c.gold.is_(None), mine)).all()
            open_ = conn.execute(select(func.count()).select_from(assignments).join(tasks, tasks.c.id == assignments.c.task_id)
                                 .where(assignments.c.status == "open", mine)).scalar()
        return {"pairs": n_tasks.get("pair", 0), "demonstrations": n_tasks.get("demonstration", 0),
                "gold_pairs": gold, "tasks_complete": sum(n >= k for _, k, n in have), "open_assignments": open_,
                "labels_missing": sum(max(0, k - n) for kind, k, n in have if kind == "pair")}
