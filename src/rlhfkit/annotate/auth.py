"""Passwords, API tokens, browser sessions and CSRF tokens.

- Passwords: argon2id through ``argon2-cffi`` (its defaults follow RFC 9106's recommendations).
- API tokens and session ids are 256-bit random strings; only their SHA-256 is stored, so a copy
  of the database grants nothing. A fast hash is enough for secrets that are not guessable.
- CSRF: every session has its own random token (the synchronizer-token pattern); each form post
  carries it in a hidden field and the server compares in constant time. The login form, which
  has no session yet, uses a double-submit cookie.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

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


@dataclass
class Attempt:
    """One login attempt, reserved before its password is checked (``LoginLimiter.reserve``)."""

    name: str
    client: str
    at: float
    retry_after: float = 0.0  # > 0: refused unchecked; seconds until an attempt may succeed
    delay: float = 0.0  # seconds to wait before the check: the address is slowed down


class LoginLimiter:
    """Failed-login throttle, within ``window`` seconds:

    - ``per_pair`` failures for one name from one client address, or ``per_name`` for one name
      from anywhere: further attempts on that name are refused (429) without checking the password,
      until the oldest failure ages out. A success clears the name's failures.
    - ``per_client`` failures from one address (any names): each further attempt from it waits
      ``slow_down`` seconds before its check, but is never refused, so a right password from an
      address shared with an attacker (an office, a proxy) still logs in.

    Race-free: an attempt is reserved (counted as a failure) under a lock *before* its password is
    checked and settled afterwards, so N parallel attempts on one name get at most the limit checked.
    In memory: one server process (as ``annotate serve`` runs)."""

    MAX_KEYS = 10_000

    def __init__(self, per_name: int = 20, per_pair: int = 5, per_client: int = 20, window: float = 900.0,
                 slow_down: float = 2.0, clock=None):
        import time

        self.per_name, self.per_pair, self.per_client = per_name, per_pair, per_client
        self.window, self.slow_down = window, slow_down
        self.clock = clock or time.monotonic
        self._failures: dict[tuple, list[float]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many names, addresses and pairs are tracked."""
        return len(self._failures)

    def _recent(self, key: tuple, now: float) -> list[float]:
        times = [t for t in self._failures.get(key, []) if now - t < self.window]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def reserve(self, name: str, client: str) -> Attempt:
        """Count an attempt before its check; ``retry_after > 0``: refused (nothing was counted)."""
        with self._lock:
            now = self.clock()
            if len(self._failures) > self.MAX_KEYS:  # attempts on ever new names: forget the aged-out ones
                for key in [k for k, times in self._failures.items() if now - times[-1] >= self.window]:
                    del self._failures[key]
            attempt = Attempt(name, client, now)
            for key, limit in ((("name", name), self.per_name), (("pair", client, name), self.per_pair)):
                times = self._recent(key, now)
                if len(times) >= limit:
                    attempt.retry_after = max(attempt.retry_after, times[-limit] + self.window - now)
            if attempt.retry_after > 0:
                return attempt
            if len(self._recent(("client", client), now)) >= self.per_client:
                attempt.delay = self.slow_down
            for key in (("name", name), ("pair", client, name), ("client", client)):
                self._failures.setdefault(key, []).append(now)
            return attempt

    def cancel(self, attempt: Attempt) -> None:
        """Uncount an attempt whose password was never checked (the server was too busy)."""
        with self._lock:
            for key in (("name", attempt.name), ("pair", attempt.client, attempt.name), ("client", attempt.client)):
                times = self._failures.get(key, [])
                if attempt.at in times:
                    times.remove(attempt.at)

    def settle(self, attempt: Attempt, ok: bool) -> None:
        """After the check: a failure stays counted; a success clears its name's failures."""
        if not ok:
            return
        with self._lock:
            self._failures.pop(("name", attempt.name), None)
            self._failures.pop(("pair", attempt.client, attempt.name), None)
            times = self._failures.get(("client", attempt.client), [])
            if attempt.at in times:
                times.remove(attempt.at)


class HashGate:
    """At most ``slots`` password checks at once: an argon2id check holds 64 MiB (RFC 9106's
    default), so 40 parallel logins used to take 2.5 GB. ``enter`` never blocks: a waiting caller
    polls from its event loop (no thread held) and gives up after ``max_wait`` seconds (429)."""

    def __init__(self, slots: int = 2, max_wait: float = 30.0):
        self.max_wait = max_wait
        self._slots = threading.BoundedSemaphore(slots)

    def enter(self) -> bool:
        return self._slots.acquire(blocking=False)

    def leave(self) -> None:
        self._slots.release()


async def check_login(store, limiter: LoginLimiter, gate: HashGate, name: str, password: str, client: str) -> tuple:
    """(user or None, refusal message or None, seconds to wait). The attempt is reserved before the
    password check (so parallel attempts cannot overrun the limit), slowed down when its address has
    many failures, and checked only through the gate (at most ``slots`` argon2 checks at once).
    Async (the login route awaits it): a waiting attempt holds no worker thread."""
    attempt = limiter.reserve(name, client)
    if attempt.retry_after > 0:
        minutes = max(1, round(attempt.retry_after / 60))
        return None, f"too many failed logins; try again in {minutes} minute{'s' if minutes > 1 else ''}", \
            attempt.retry_after
    if attempt.delay:
        await asyncio.sleep(attempt.delay)
    deadline = time.monotonic() + gate.max_wait
    while not gate.enter():
        if time.monotonic() > deadline:
            limiter.cancel(attempt)
            return None, "the server is busy checking other logins; try again in a few seconds", 5.0
        await asyncio.sleep(0.02)
    try:
        from starlette.concurrency import run_in_threadpool

        user = await run_in_threadpool(store.login, name, password)
    finally:
        gate.leave()
    limiter.settle(attempt, ok=user is not None)
    return user, None, 0.0
