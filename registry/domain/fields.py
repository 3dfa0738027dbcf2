"""Field types of the commands: what a stored string may hold, the email rule, strict numbers.

Every string a command carries ends up in the database (a column, the log's metadata, an
encrypted payload): PostgreSQL refuses NUL in text, and a lone surrogate (valid JSON, `"\\ud800"`)
cannot be encoded at all. So the command models refuse them, and every entry point (bus,
adapter, import, CLI) answers INVALID_COMMAND instead of failing in the driver.

- `PLAIN`: identifiers and names (command ids, actor, OAuth provider and account ids, hashes,
  tokens): no control character at all (NUL, newline, tab, DEL, C1), no surrogate.
- `SECRET_PLAIN`: the same for a `SecretStr`, without echoing the value.
- `NO_NUL` (passwords): no NUL and no surrogate (other characters are the user's business).
- `EmailAddress`: `events.emails.validate_email_address`, the value becomes the canonical form.
- `Profile`: custom column values: no NUL or surrogate in any string, keys included.
- Booleans and integers are strict (`StrictBool`, `StrictInt`): `"yes"`, `1` or `"1"` is not
  a boolean, `"5"` or `5.0` not an integer.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any

from pydantic import AfterValidator, Field, SecretStr, StrictInt

from events.emails import validate_email_address

#: PostgreSQL `integer`: the read model's `expires_at` and version columns
INT32_MAX = 2**31 - 1


def _first_bad(value: str, *, controls: bool) -> str | None:
    for ch in value:
        category = unicodedata.category(ch)
        if ch == "\x00" or category == "Cs" or (controls and category == "Cc"):
            return f"U+{ord(ch):04X}"
    return None


def _text(value: str) -> str:
    bad = _first_bad(value, controls=True)
    if bad:
        raise ValueError(f"must not contain control characters or surrogates (found {bad})")
    return value


def _secret_text(value: SecretStr) -> SecretStr:
    _text(value.get_secret_value())
    return value


def _password(value: SecretStr) -> SecretStr:
    bad = _first_bad(value.get_secret_value(), controls=False)
    if bad:
        raise ValueError(f"must not contain NUL or surrogate characters (found {bad})")
    return value


def _email(value: str) -> str:
    return validate_email_address(value)  # InvalidEmailError is a ValueError


def _profile_value(value: object, where: str) -> None:
    if isinstance(value, str):
        bad = _first_bad(value, controls=False)
        if bad:
            raise ValueError(f"{where} must not contain NUL or surrogate characters ({bad})")
    elif isinstance(value, dict):
        for key, item in value.items():
            _profile_value(key, f"{where} key")
            _profile_value(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for item in value:
            _profile_value(item, where)


def _profile(value: dict[str, Any]) -> dict[str, Any]:
    for key, item in value.items():
        _profile_value(key, "a profile key")
        _profile_value(item, f"profile.{key}")
    return value


#: put after the length constraints: `Annotated[str, Field(max_length=200), PLAIN]` (so the
#: lengths are checked, and reported, as lengths of the string)
PLAIN = AfterValidator(_text)
SECRET_PLAIN = AfterValidator(_secret_text)
NO_NUL = AfterValidator(_password)
#: the raw bound only caps the validator's work; the rule caps the canonical form at 320
EmailAddress = Annotated[str, Field(max_length=1024), AfterValidator(_email)]
Profile = Annotated[dict[str, Any], AfterValidator(_profile)]
Int32 = Annotated[StrictInt, Field(ge=-INT32_MAX - 1, le=INT32_MAX)]
