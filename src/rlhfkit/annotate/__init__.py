"""Human preference collection: the annotation server (``rlhfkit annotate``).

People compare two responses to a prompt (or write a response: demonstrations) in a browser or
through a JSON API; labels land in a database (SQLite file or PostgreSQL) whose schema Alembic
versions; admins watch agreement and gold accuracy and export TRL-format data for ``rlhfkit rm``
and ``rlhfkit dpo``.

Modules: ``schema`` (tables), ``db`` (engine, migrations, errors), ``accounts`` (users, tokens,
sessions), ``store`` (tasks, assignments, answers: ``Store``, every read and write),
``assignment`` (who gets which task), ``agreement`` (pure statistics), ``export`` (TRL rows),
``auth`` (passwords, tokens, sessions, CSRF, login limits), ``inputs`` (the request schema of
API and forms), ``api`` / ``pages`` / ``admin`` (the FastAPI routers: JSON API, pages, dashboard),
``app`` (puts them together), ``cli``. Needs the ``annotate`` extra (``rlhfkit.extras``).
This package never imports torch or a training recipe.
"""
