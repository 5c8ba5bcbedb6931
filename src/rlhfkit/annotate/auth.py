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


class LoginLimiter:
    """Failed-login throttle: after ``per_name`` failures for one user name (from anywhere), or
    ``per_client`` failures from one client address (any names), within ``window`` seconds, further
    attempts are refused without checking the password until the oldest failure ages out. A
    successful login clears its name's failures. In memory: one server process (as ``annotate serve`` runs)."""

    def __init__(self, per_name: int = 5, per_client: int = 20, window: float = 900.0, clock=None):
        import threading
        import time

        self.per_name, self.per_client, self.window = per_name, per_client, window
        self.clock = clock or time.monotonic
        self._failures: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> list[float]:
        times = [t for t in self._failures.get(key, []) if now - t < self.window]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def retry_after(self, name: str, client: str) -> float:
        """Seconds until an attempt is allowed again; 0 when it is allowed now."""
        with self._lock:
            now = self.clock()
            wait = 0.0
            for key, limit in ((("name", name), self.per_name), (("client", client), self.per_client)):
                times = self._recent(key, now)
                if len(times) >= limit:
                    wait = max(wait, times[-limit] + self.window - now)
            return wait

    def failed(self, name: str, client: str) -> None:
        with self._lock:
            now = self.clock()
            for key in (("name", name), ("client", client)):
                self._failures.setdefault(key, []).append(now)

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(("name", name), None)
