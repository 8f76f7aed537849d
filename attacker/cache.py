"""The resumable query cache, re-exported from :mod:`shared.cache` (the attacker and the legitimate
customer buy through the same cache)."""

from shared.cache import SCHEMA, QueryCache, account_fingerprint, image_ids

__all__ = ["SCHEMA", "QueryCache", "account_fingerprint", "image_ids"]
