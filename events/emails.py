"""The one rule for comparing email addresses, shared by the write side and the read model."""

from __future__ import annotations


def normalise_email(email: str) -> str:
    """Trimmed and lower-cased as a whole: `" Alice@Example.COM "` → `"alice@example.com"`.

    Uniqueness (the reservation row) and lookups (`lower(email)` index) both use this rule.
    """
    return email.strip().lower()
