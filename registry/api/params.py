"""Query parameter types of the read API: strict booleans and integers, instants that exist in
UTC, and text the database can take. A value that fails answers 422 `INVALID_REQUEST` with
the reason in `details`, never a 500 from deeper down."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

_DIGITS = re.compile(r"[0-9]{1,12}")


def _strict_bool(value: object) -> bool:
    # pydantic's lax mode would take "yes", "on", "1", "t", "TRUE"...: only JSON's spellings
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise ValueError("must be true or false")


def _strict_int(value: object) -> int:
    # lax mode would take "1.0", " 1 ", "1_000", "+1": only plain decimal digits
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    raise ValueError("must be a whole number written in decimal digits")


def _instant(value: datetime) -> datetime:
    """Aware, in UTC (naive means UTC); an offset that moves it out of years 1-9999 is refused
    here, not by an OverflowError in the database driver."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is outside the years 1 to 9999 once converted to UTC") from None


def _plain_text(value: str | None) -> str | None:
    if value is None:
        return None
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cs"):
            raise ValueError(
                f"must not contain control characters (found U+{ord(ch):04X}); "
                "no stored value holds one"
            )
    return value


StrictBool = Annotated[bool, BeforeValidator(_strict_bool)]
StrictInt = Annotated[int, BeforeValidator(_strict_int)]
Instant = Annotated[datetime, AfterValidator(_instant)]
PlainText = Annotated[str, AfterValidator(_plain_text)]
