"""The optional parts of rlhfkit and the one-line error a command gives when its part is missing.

``pip install rlhfkit`` holds the trainers, evaluation and the demo; the web stack and the OpenAI
client come with extras: ``rlhfkit[annotate]`` (the annotation server and its database),
``rlhfkit[judge]`` (AI judges behind http(s) endpoints) and ``rlhfkit[serve]`` (``rlhfkit serve``).
A command that needs one calls ``require_extra`` before importing it; ``MissingExtra`` is a
``ConfigError``, so the command line prints it as one line and exits 2.
"""

from __future__ import annotations

import importlib

from .config import ConfigError

# the modules each extra brings (import names, not distribution names), checked when none are named
EXTRAS = {
    "annotate": ("fastapi", "uvicorn", "sqlalchemy", "alembic", "argon2", "jinja2", "markdown", "krippendorff"),
    "judge": ("openai",),
    "serve": ("fastapi", "uvicorn"),
}


class MissingExtra(ConfigError):
    """A command needs an extra that is not installed; the message names it and the missing modules."""

    def __init__(self, extra: str, missing: list[str]):
        super().__init__(f"this command needs the {extra} extra: pip install 'rlhfkit[{extra}]' "
                         f"(missing: {', '.join(missing)})")
        self.extra, self.missing = extra, list(missing)


def require_extra(extra: str, *modules: str) -> None:
    """Import ``modules`` (default: every module of ``extra``); raise ``MissingExtra`` naming the
    extra and each module that cannot be imported."""
    missing = []
    for name in modules or EXTRAS[extra]:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtra(extra, missing)
