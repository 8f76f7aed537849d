"""Accounts and API keys: random keys shown once, stored only as SHA-256 hashes.

A key is ``heist_`` + 32 random bytes (urlsafe base64): 256 bits of entropy, so a plain SHA-256
is a safe verifier (no salt or slow hash needed: nothing to brute-force) and lets the store look
an account up by the hash. The stored and the computed hash are compared with
``hmac.compare_digest`` anyway, so no timing depends on how much of a guess was right.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime

from shared.schemas import API_KEY_PREFIX, AccountInfo, AccountUsage


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(key).encode(), stored_hash.encode())


def new_account_id() -> str:
    return "acct_" + secrets.token_hex(8)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Account:
    id: str
    name: str
    tier: str
    key_hash: str
    created_at: str = field(default_factory=now_iso)
    revoked: bool = False

    def info(self, usage: AccountUsage | None = None) -> AccountInfo:
        return AccountInfo(id=self.id, name=self.name, tier=self.tier, created_at=self.created_at,
                           revoked=self.revoked, usage=usage or AccountUsage())

    def to_hash(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "tier": self.tier, "key_hash": self.key_hash,
                "created_at": self.created_at, "revoked": "1" if self.revoked else "0"}

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> Account:
        return cls(id=h["id"], name=h["name"], tier=h["tier"], key_hash=h["key_hash"],
                   created_at=h.get("created_at", ""), revoked=h.get("revoked") == "1")


def make_account(name: str, tier: str) -> tuple[Account, str]:
    """A new account and its API key (the key exists only in the return value)."""
    key = new_api_key()
    return Account(id=new_account_id(), name=name, tier=tier, key_hash=hash_key(key)), key
