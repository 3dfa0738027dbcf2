"""The one email rule: which addresses are accepted, and the canonical form of an address.

Every place that stores, reserves or looks up an address uses the functions here, so the
write side, the read model and the database never disagree (lookups compare canonical strings
by plain equality; no database `lower()`, whose folding differs between SQLite and PostgreSQL).

`validate_email_address(raw)` (commands: register, update, and so every entry point) accepts
an address when, after stripping surrounding whitespace:

- it holds no control, format or invisible character (NUL, zero-width space, bidi controls,
  soft hyphen, line separators, unassigned code points, ...), and no space;
- it is stable under NFKC once NFC-normalised: compatibility forms (the fullwidth at-sign
  U+FF20, fullwidth letters, ligatures) are refused, never silently folded;
- email-validator (what pydantic's `EmailStr`, and so FastAPI Users, uses) accepts its syntax,
  without a DNS check and without quoted local parts, IP literals or display names;
- neither its local part nor any label of its domain mixes scripts (a Cyrillic U+0430 `a` among
  Latin letters): letters of one script per part, except the combinations Unicode's "highly
  restrictive" profile (UTS #39) allows, Latin with Han and Hiragana/Katakana, Bopomofo or
  Hangul. Digits, marks and punctuation belong to every script;
- its canonical form is at most 320 characters (measured after lower-casing, which can grow:
  `"İ".lower()` is two code points).

It returns the canonical form. `normalise_email(raw)` computes the same form for any string
without refusing anything (a login's typed address, an address stored under an older rule):

    NFC(strip(raw)), the domain as email-validator normalises it (IDNA: `xn--` labels read as
    Unicode, so `a@xn--bcher-kva.de` and `a@bücher.de` are one address), then the whole
    address lower-cased with `str.lower` (so `İnfo@x.com` is `i̇nfo@x.com`; `ß` stays `ß`).

Lower-casing the local part follows what every large mail provider does and what users expect
of a login; RFC 5321's case-sensitive local parts are not honoured.
"""

from __future__ import annotations

import unicodedata

from email_validator import EmailNotValidError, ValidatedEmail, validate_email

#: the registry's columns (`user.email`, the reservation key) hold this many characters
MAX_LENGTH = 320

#: Unicode categories never allowed in an address: controls, format characters (zero-width
#: and bidi controls among them), surrogates, private use, unassigned, line/paragraph separators
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})

#: UTS #39 "highly restrictive": the only script mixes allowed within one part
_ALLOWED_MIXES = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)
#: first words of character names that do not name the script they belong to
_SCRIPT_ALIASES = {"CJK": "HAN", "IDEOGRAPHIC": "HAN", "KATAKANA-HIRAGANA": "KATAKANA"}


class InvalidEmailError(ValueError):
    """An address the rule refuses; the message says why (never more of the input than one
    character's code point and name)."""


def _describe(ch: str) -> str:
    name = unicodedata.name(ch, "")  # controls and surrogates have none
    return f"U+{ord(ch):04X} {name}" if name else f"U+{ord(ch):04X}"


def _validated(address: str) -> ValidatedEmail:
    return validate_email(
        address,
        check_deliverability=False,
        allow_smtputf8=True,
        allow_quoted_local=False,
        allow_domain_literal=False,
        allow_display_name=False,
    )


def _canonical(local_part: str, domain: str) -> str:
    return unicodedata.normalize("NFC", f"{local_part}@{domain}".lower())


def normalise_email(email: str) -> str:
    """The canonical form of any string (see the module docstring); refuses nothing.

    Used for reservations, the read model's `email` column and every lookup. For an address
    `validate_email_address` accepts, both return the same string; applying it twice changes
    nothing."""
    text = unicodedata.normalize("NFC", email.strip())
    if text.isascii() and "xn--" not in text.lower():
        # email-validator only lower-cases an ASCII domain: skip its cost (the projection
        # normalises every registration it folds)
        return text.lower()
    try:
        result = _validated(text)
    except EmailNotValidError:
        return unicodedata.normalize("NFC", text.lower())
    return _canonical(result.local_part, result.domain)


def lookup_key(email: str) -> str | None:
    """What to compare the stored `email` column with to find `email`: its canonical form, or
    None when no stored address can match (NUL, a lone surrogate, nothing but spaces), so
    the caller answers "no such user" without asking a database that cannot even take it."""
    key = normalise_email(email)
    if not key or any(ch == "\x00" or "\ud800" <= ch <= "\udfff" for ch in key):
        return None
    return key


def _scripts(part: str) -> set[str]:
    scripts: set[str] = set()
    for ch in part:
        if not unicodedata.category(ch).startswith("L"):
            continue  # digits, marks, punctuation: common to every script
        first = unicodedata.name(ch, "").split(" ", 1)[0]
        if first and first != "MODIFIER":
            scripts.add(_SCRIPT_ALIASES.get(first, first))
    return scripts


def _mixed(part: str) -> str | None:
    """The scripts of `part`, joined, when they may not be mixed; else None."""
    scripts = _scripts(part)
    if len(scripts) <= 1 or any(scripts <= allowed for allowed in _ALLOWED_MIXES):
        return None
    return ", ".join(sorted(s.title() for s in scripts))


def validate_email_address(email: str) -> str:
    """The canonical form of an acceptable address; `InvalidEmailError` saying why not."""
    text = email.strip()
    if not text:
        raise InvalidEmailError("an email address cannot be empty or only spaces")
    for ch in text:
        if unicodedata.category(ch) in _REFUSED_CATEGORIES:
            kind = "a space" if ch == " " else "an invisible or control character"
            raise InvalidEmailError(f"an email address cannot contain {kind} ({_describe(ch)})")
    text = unicodedata.normalize("NFC", text)
    for ch in text:
        if unicodedata.normalize("NFKC", ch) != ch:
            raise InvalidEmailError(
                f"an email address cannot contain the compatibility character {_describe(ch)}; "
                f"write {unicodedata.normalize('NFKC', ch)!r} instead"
            )
    try:
        result = _validated(text)
    except EmailNotValidError as exc:
        raise InvalidEmailError(f"not a valid email address: {exc}") from None
    mixed = _mixed(result.local_part)
    if mixed:
        raise InvalidEmailError(
            f"the part before the @-sign mixes scripts ({mixed}): a look-alike letter?"
        )
    for label in result.domain.split("."):
        mixed = _mixed(label)
        if mixed:
            raise InvalidEmailError(
                f"the domain label {label!r} mixes scripts ({mixed}): a look-alike letter?"
            )
    canonical = _canonical(result.local_part, result.domain)
    if len(canonical) > MAX_LENGTH:
        raise InvalidEmailError(
            f"an email address may have at most {MAX_LENGTH} characters once normalised "
            f"(this one has {len(canonical)})"
        )
    return canonical
