"""``rlhfkit annotate SUBCOMMAND``: serve, import, add-user, export, stats, guidelines, migrate, and the
account commands revoke-token, set-password, deactivate, activate (effective on the server's next request).

``--db`` takes a file path or ``sqlite:///FILE`` (default ``annotate.db``) or a
``postgresql://user@host:port/db`` URL. Every subcommand first brings the schema up to date
(Alembic), so a database made by an older rlhfkit keeps working. Errors a user can fix print one
line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..data.errors import DataError
from ..extras import MissingExtra, require_extra

EXIT_USER_ERROR = 2
DEFAULT_DB = os.environ.get("RLHFKIT_ANNOTATE_DB", "annotate.db")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlhfkit annotate", description="Collect human preferences and demonstrations.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help, description=help)
        s.add_argument("--db", default=DEFAULT_DB,
                       help="database: a file path / sqlite:///FILE, or postgresql://USER@HOST:PORT/DB "
                            "(default: %(default)s, or $RLHFKIT_ANNOTATE_DB)")
        s.add_argument("--debug", action="store_true", help="show tracebacks")
        return s

    s = cmd("serve", "run the web app and JSON API")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    s.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    s.add_argument("--access-log", action="store_true", help="log every request")
    s.add_argument("--forwarded-allow-ips", default=None, metavar="IPS",
                   help="comma-separated addresses of your reverse proxies, whose X-Forwarded-For/-Proto are "
                        "trusted (the client address for login limits, https for Secure cookies); default: none, "
                        "the headers are ignored")

    s = cmd("import", "add pairs (or demonstration prompts) from a JSONL file, all or nothing")
    s.add_argument("file", help="JSONL: {prompt, response_a, response_b} with optional id, metadata, gold "
                                "(what `rlhfkit sample-pairs` writes); demonstrations: {prompt} with optional completion")
    s.add_argument("--overlap", type=int, default=3, help="K: different annotators per task (default: %(default)s)")
    s.add_argument("--gold-rate", type=float, default=None,
                   help="R: share of each annotator's tasks that are gold pairs (records with `gold`); kept for "
                        "later imports (default: unchanged, 0 at first)")
    s.add_argument("--type", choices=("pairs", "demonstrations"), default="pairs", help="task type (default: pairs)")

    s = cmd("add-user", "create a user; prints the API token as the last word")
    s.add_argument("--name", required=True)
    s.add_argument("--role", required=True, choices=("admin", "annotator"))
    g = s.add_mutually_exclusive_group()
    g.add_argument("--password", help="browser login password (visible to other local users: prefer --password-stdin)")
    g.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")

    s = cmd("revoke-token", "revoke a user's API token at once (a new one is printed only with --new)")
    s.add_argument("--name", required=True)
    s.add_argument("--new", action="store_true", help="issue a new token and print it as the last word")

    s = cmd("set-password", "set a user's browser password; ends the user's browser sessions")
    s.add_argument("--name", required=True)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--password", help="the new password (visible to other local users: prefer --password-stdin)")
    g.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")

    s = cmd("deactivate", "lock a user out at once: no login, API token or browser session works (labels stay)")
    s.add_argument("--name", required=True)
    s = cmd("activate", "let a deactivated user back in (same password and token)")
    s.add_argument("--name", required=True)

    s = cmd("export", "write TRL-format JSONL")
    s.add_argument("--out", required=True, help="output file (.jsonl)")
    s.add_argument("--mode", choices=("majority", "per_annotator", "demonstrations"), default="majority",
                   help="majority: one row per pair, ties dropped (default); per_annotator: one row per label with "
                        "agreement flags; demonstrations: {prompt, completion} for `rlhfkit sft`")
    s.add_argument("--include-gold", action="store_true", help="export gold pairs too")
    s.add_argument("--source", default=None, help="only the tasks pushed under this batch name (a pipeline round)")

    s = cmd("stats", "print the quality statistics (as GET /api/stats) as JSON")
    s.add_argument("--source", default=None, help="only the tasks pushed under this batch name (a pipeline round)")

    s = cmd("guidelines", "set the annotator guidelines from a markdown file")
    s.add_argument("--file", required=True, help="markdown file")

    s = cmd("migrate", "bring the database schema up to date (other commands do this too)")
    s.add_argument("--revision", default="head", help="target Alembic revision (default: head)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        # every subcommand opens the database (SQLAlchemy, Alembic); the extra is one install
        require_extra("annotate")
    except MissingExtra as e:
        return _error(args, e)
    from .db import StoreError

    try:
        return _run(args)
    except (DataError, StoreError, ValueError, OSError) as e:
        return _error(args, e, isinstance(e, (DataError, StoreError, MissingExtra)))
    except KeyboardInterrupt:
        return 130


def _error(args, e: Exception, plain: bool = True) -> int:
    """One stderr line (the traceback too with --debug); exit 2."""
    if args.debug:
        import traceback

        traceback.print_exc()
    msg = str(e) if plain else f"{type(e).__name__}: {e}"
    print(f"rlhfkit annotate {args.command}: error: {msg}".replace("\n", " "), file=sys.stderr)
    return EXIT_USER_ERROR


def _open(args):
    from sqlalchemy.exc import OperationalError

    from .store import Store

    if args.db.startswith(("postgresql:", "postgres:")):
        require_extra("annotate", "psycopg")
    try:
        return Store(args.db, migrate=True)
    except OperationalError as e:
        raise ValueError(f"cannot open database {args.db}: {str(e.orig).strip().splitlines()[0]}") from e


def _run(args) -> int:
    if args.command == "import":
        from .records import read_tasks

        # Validate the whole file before opening the database: a bad line changes nothing.
        records = read_tasks(args.file, "pair" if args.type == "pairs" else "demonstration")
    store = _open(args)
    try:
        return COMMANDS[args.command](args, store, **({"records": records} if args.command == "import" else {}))
    finally:
        store.close()


def _serve(args, store) -> int:
    import uvicorn

    from .app import create_app

    print(f"rlhfkit annotate: serving http://{args.host}:{args.port} (database {store.engine.url!r})", flush=True)
    # uvicorn would trust X-Forwarded-* from 127.0.0.1 by default: any local client could pick its
    # own address (fresh login attempts) and scheme; trust only the proxies named here.
    proxies = args.forwarded_allow_ips
    uvicorn.run(create_app(store), host=args.host, port=args.port, log_level="warning",
                access_log=args.access_log, proxy_headers=bool(proxies), forwarded_allow_ips=proxies or "")
    return 0


def _import(args, store, records) -> int:
    report = store.import_tasks(records, overlap=args.overlap, gold_rate=args.gold_rate, source=args.file)
    what = "pairs" if report.kind == "pair" else "demonstration prompts"
    gold = f" ({report.gold} gold)" if report.gold else ""
    print(f"rlhfkit annotate import: {report.added} {what} added{gold}, {report.unchanged} already there, "
          f"overlap {args.overlap}, gold rate {store.gold_rate()}")
    return 0


def _password(args) -> str | None:
    password = args.password
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise ValueError("--password-stdin: no password on stdin")
    return password


def _add_user(args, store) -> int:
    password = _password(args)
    uid, token = store.add_user(args.name, args.role, password)
    login = "browser login and API" if password else "API only (no password)"
    print(f"rlhfkit annotate: added {args.role} {args.name!r} (id {uid}; {login}). API token: {token}")
    return 0


def _revoke_token(args, store) -> int:
    token = store.revoke_token(args.name)
    if args.new:
        print(f"rlhfkit annotate: revoked {args.name!r}'s API token. New API token: {token}")
    else:
        print(f"rlhfkit annotate: revoked {args.name!r}'s API token; the user has no API token now "
              "(--new issues one)")
    return 0


def _set_password(args, store) -> int:
    store.set_password(args.name, _password(args))
    print(f"rlhfkit annotate: password of {args.name!r} changed; their browser sessions are ended")
    return 0


def _set_active(args, store) -> int:
    active = args.command == "activate"
    store.set_active(args.name, active)
    print(f"rlhfkit annotate: {args.name!r} " + ("activated" if active else
                                                "deactivated: logins, API token and sessions refused"))
    return 0


def _export(args, store) -> int:
    from .export import export_rows, write_jsonl

    rows, dropped = export_rows(store, args.mode, args.include_gold, args.source)
    write_jsonl(rows, args.out)
    extra = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(dropped.items()))
    print(f"rlhfkit annotate export: {len(rows)} rows ({args.mode}) -> {args.out}"
          + (f"; left out: {extra}" if extra else ""))
    return 0


def _stats(args, store) -> int:
    from .api import stats_payload

    print(json.dumps(stats_payload(store, args.source), indent=2))
    return 0


def _guidelines(args, store) -> int:
    from pathlib import Path

    version = store.set_guidelines(Path(args.file).read_text(encoding="utf-8"))
    print(f"rlhfkit annotate: guidelines set (version {version})")
    return 0


def _migrate(args, store) -> int:
    if args.revision != "head":
        store.downgrade(args.revision)
    print(f"rlhfkit annotate: database at revision {store.revision()}")
    return 0


COMMANDS = {"serve": _serve, "import": _import, "add-user": _add_user, "export": _export, "stats": _stats,
            "guidelines": _guidelines, "migrate": _migrate, "revoke-token": _revoke_token,
            "set-password": _set_password, "deactivate": _set_active, "activate": _set_active}
