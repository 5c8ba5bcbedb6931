"""Passwords, API tokens, browser sessions and CSRF tokens.

- Passwords: argon2id through ``argon2-cffi`` (its defaults follow RFC 9106's recommendations).
- API tokens and session ids are 256-bit random strings; only their SHA-256 is stored, so a copy
  of the database grants nothing. A fast hash is enough for secrets that are not guessable.
- CSRF: every session has its own random token (the synchronizer-token pattern); each form post
  carries it in a hidden field and the server compares in constant time. The login form, which
  has no session yet, uses a double-submit cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    if not stored:
        return False
    try:
        return _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def new_secret() -> str:
    """A URL-safe random string with 256 bits of entropy (tokens, session ids, CSRF tokens)."""
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """What the database keeps of a token or session id."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def same(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two secrets; False when either is missing."""
    return bool(a) and bool(b) and hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
