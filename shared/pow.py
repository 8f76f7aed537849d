"""HashCash proof of work for the API (hashlib SHA-256, no PoW library).

Challenge token (stateless, from the HTTP contract): ``<payload>.<mac>`` where ``payload`` is
base64url(JSON {account, body (sha256 hex of the request body), bits, exp (unix seconds), salt})
and ``mac`` is base64url(HMAC-SHA256(server secret, payload)). The client finds a nonce such that
SHA-256(token ":" nonce) starts with ``bits`` zero bits and resends the same body with header
``X-PoW-Solution: <token>:<nonce>``. The server verifies signature, expiry, account, body hash
and work here (pure functions), then spends the token once in the store (replay refused).

Unlike the reference code, a stamp is bound to its challenge, its account and its request body,
and expires; spending it once is the store's job (``SET NX`` with a TTL up to ``exp``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

HEADER = "X-PoW-Solution"
ALGORITHM = "SHA-256"
MAX_BITS = 40
MAX_TOKEN_CHARS = 1024


class PowError(ValueError):
    """A solution that does not hold; ``reason`` is one of the REASONS."""

    REASONS = ("malformed", "bad_signature", "expired", "wrong_account", "wrong_body", "insufficient_work", "replayed")

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Challenge:
    token: str
    bits: int
    expires_at: float  # unix seconds

    def as_dict(self) -> dict:
        exp = datetime.fromtimestamp(self.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"algorithm": ALGORITHM, "token": self.token, "difficulty": self.bits, "expires_at": exp}


@dataclass(frozen=True)
class Stamp:
    """A verified solution: ``token_id`` is what the store spends once (until ``expires_at``)."""

    token_id: str
    bits: int
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def leading_zero_bits(digest: bytes) -> int:
    n = int.from_bytes(digest, "big")
    return len(digest) * 8 - n.bit_length()


def work_of(token: str, nonce: str | int) -> int:
    """Leading zero bits of SHA-256(token ":" nonce)."""
    return leading_zero_bits(hashlib.sha256(f"{token}:{nonce}".encode()).digest())


def make_challenge(secret: bytes, account: str, body: bytes, bits: int, ttl_s: float = 120.0,
                   now: float | None = None) -> Challenge:
    if not 0 < bits <= MAX_BITS:
        raise ValueError(f"difficulty must be in 1..{MAX_BITS} bits, got {bits}")
    exp = (time.time() if now is None else now) + ttl_s
    payload = {"account": account, "body": body_digest(body), "bits": int(bits), "exp": round(exp, 3),
               "salt": secrets.token_hex(8)}
    p64 = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    mac = _b64(hmac.new(secret, p64.encode(), hashlib.sha256).digest())
    return Challenge(token=f"{p64}.{mac}", bits=int(bits), expires_at=exp)


def parse_solution(header: str) -> tuple[str, str]:
    """Split ``<token>:<nonce>``; the token itself has no ':' (base64url and '.')."""
    if not header or len(header) > MAX_TOKEN_CHARS or header.count(":") != 1:
        raise PowError("malformed", f"{HEADER} must be '<token>:<nonce>'")
    token, nonce = header.split(":")
    if not token or not nonce or len(nonce) > 64 or not nonce.isascii() or not nonce.isalnum():
        raise PowError("malformed", f"{HEADER} must be '<token>:<nonce>' with an alphanumeric nonce")
    return token, nonce


def verify_solution(secret: bytes, header: str, account: str, body: bytes, now: float | None = None) -> Stamp:
    """Check a solution header against this request; raises :class:`PowError` with the reason."""
    token, nonce = parse_solution(header)
    try:
        p64, mac = token.split(".")
        given = _unb64(mac)
    except (ValueError, TypeError) as e:
        raise PowError("malformed", "PoW token is not '<payload>.<mac>'") from e
    expected = hmac.new(secret, p64.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(given, expected):
        raise PowError("bad_signature", "PoW token signature does not verify (forged or from another server)")
    try:
        payload = json.loads(_unb64(p64))
        bits, exp = int(payload["bits"]), float(payload["exp"])
        tok_account, tok_body = str(payload["account"]), str(payload["body"])
    except (ValueError, KeyError, TypeError) as e:
        raise PowError("malformed", "PoW token payload is not valid") from e
    if (time.time() if now is None else now) > exp:
        raise PowError("expired", "PoW challenge expired; ask again without a solution")
    if not hmac.compare_digest(tok_account, account):
        raise PowError("wrong_account", "PoW challenge was issued to another account")
    if not hmac.compare_digest(tok_body, body_digest(body)):
        raise PowError("wrong_body", "PoW challenge was issued for another request body")
    if work_of(token, nonce) < bits:
        raise PowError("insufficient_work", f"SHA-256(token:nonce) lacks {bits} leading zero bits")
    return Stamp(token_id=hashlib.sha256(token.encode()).hexdigest(), bits=bits, expires_at=exp)


def solve(token: str, bits: int, start: int = 0, step: int = 1, max_tries: int | None = None) -> tuple[int, int] | None:
    """Find a nonce (decimal) with ``bits`` leading zero bits: returns (nonce, hashes tried) or None.

    ``start``/``step`` let several processes search disjoint nonces (process i of k: start=i, step=k).
    The prefix ``token:`` is hashed once and copied per try.
    """
    prefix = hashlib.sha256(f"{token}:".encode())
    target = 1 << (256 - bits)  # digest as an integer must be below this
    nonce, tries = start, 0
    while max_tries is None or tries < max_tries:
        h = prefix.copy()
        h.update(str(nonce).encode())
        tries += 1
        if int.from_bytes(h.digest(), "big") < target:
            return nonce, tries
        nonce += step
    return None
