"""Alembic environment for the annotation database.

``rlhfkit.annotate.store.Store.migrate`` runs Alembic programmatically and hands over its own
connection (``config.attributes["connection"]``); with the ``alembic`` command line, set
``sqlalchemy.url`` in an alembic.ini whose ``script_location`` points at this folder.
"""

from alembic import context
from sqlalchemy import create_engine

from rlhfkit.annotate.schema import metadata


def run(connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things; batch mode copies the table instead.
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        run(conn)
