"""The one email rule (`events.emails`): which addresses are refused and why, the canonical form,
and that the lenient form used for lookups agrees with the strict one on every valid address."""

from __future__ import annotations

import unicodedata

import pytest

from events.emails import (
    InvalidEmailError,
    lookup_key,
    normalise_email,
    validate_email_address,
)

NFC_CAFE = unicodedata.normalize("NFC", "café@example.com")
NFD_CAFE = unicodedata.normalize("NFD", "café@example.com")

#: (typed, canonical form)
ACCEPTED = [
    ("  Spaced@example.com  ", "spaced@example.com"),
    ("\tTabbed@Example.COM\n", "tabbed@example.com"),
    ("İnfo@example.com", "i\u0307nfo@example.com"),  # 'İ'.lower() is two code points
    (NFC_CAFE, NFC_CAFE),
    (NFD_CAFE, NFC_CAFE),
    ("Straße@Example.com", "straße@example.com"),  # lower(), not casefold(): ß stays
    ("user@xn--bcher-kva.de", "user@bücher.de"),  # IDNA: one address, two spellings
    ("user@BÜCHER.de", "user@bücher.de"),
    ("иван@пример.рф", "иван@пример.рф"),  # one script per part is fine
    ("ivan@пример.рф", "ivan@пример.рф"),  # scripts may differ between parts
    ("やまだ太郎@example.jp", "やまだ太郎@example.jp"),  # Han + Hiragana: UTS 39 allows it
    ("a@b.co", "a@b.co"),
]

#: (typed, words the refusal must contain)
REFUSED = [
    ("not-an-email", "@-sign"),
    ("     ", "empty"),
    ("", "empty"),
    ("a\uff20example.com", "U+FF20"),  # fullwidth at-sign
    ("\uff41@example.com", "U+FF41"),  # fullwidth a
    ("zero\u200bwidth@example.com", "U+200B"),
    ("a\x00b@example.com", "U+0000"),
    ("\u202eevil@example.com", "U+202E"),  # right-to-left override
    ("soft\u00adhyphen@example.com", "U+00AD"),
    ("two words@example.com", "space"),
    ("a\ud800@example.com", "U+D800"),  # a lone surrogate (valid JSON: "\ud800")
    ("p\u0430ypal@example.com", "Cyrillic, Latin"),  # a Cyrillic U+0430 in a Latin local part
    ("user@ex\u0430mple.com", "Cyrillic, Latin"),  # ... in a domain label
    ("user@xn--exmple-4nf.com", "Cyrillic, Latin"),  # the same, spelt in punycode
    ("İ" * 200 + "@example.com", "too long"),  # 212 characters, 412 once lower-cased
    ('"quoted"@example.com', "Quoting"),
    ("a@[127.0.0.1]", "bracketed"),
    ("a@localhost", "period"),
]


@pytest.mark.parametrize(("typed", "canonical"), ACCEPTED)
def test_accepted_addresses_have_one_canonical_form(typed: str, canonical: str) -> None:
    assert validate_email_address(typed) == canonical
    assert normalise_email(typed) == canonical
    assert normalise_email(canonical) == canonical  # stable: lookups of stored values work
    assert validate_email_address(canonical) == canonical
    assert lookup_key(typed.upper() if typed.isascii() else typed) == canonical


@pytest.mark.parametrize(("typed", "reason"), REFUSED)
def test_refused_addresses_say_why(typed: str, reason: str) -> None:
    with pytest.raises(InvalidEmailError) as caught:
        validate_email_address(typed)
    assert reason in str(caught.value)
    # the lenient form refuses nothing and is stable too (lookups of anything typed)
    assert normalise_email(normalise_email(typed)) == normalise_email(typed)


def test_twins_share_a_canonical_form() -> None:
    assert NFC_CAFE != NFD_CAFE
    assert validate_email_address(NFC_CAFE) == validate_email_address(NFD_CAFE.upper())
    assert normalise_email("Info@Example.com") != normalise_email("İnfo@example.com")
    assert normalise_email("strasse@example.com") != normalise_email("straße@example.com")


def test_the_length_limit_is_measured_after_the_transformation() -> None:
    # email-validator caps the local part at 64 characters; İ doubles when lower-cased
    local = "İ" * 64
    canonical = validate_email_address(f"{local}@example.com")
    assert len(canonical) == 64 * 2 + len("@example.com")
    assert len(canonical) <= 320


def test_lookup_key_is_none_for_what_no_address_holds() -> None:
    assert lookup_key("a\x00b@example.com") is None
    assert lookup_key("a\ud800@example.com") is None
    assert lookup_key("    ") is None
    assert lookup_key("not-an-email") == "not-an-email"  # an address stored long ago may be


def test_errors_are_value_errors_for_pydantic() -> None:
    assert issubclass(InvalidEmailError, ValueError)
