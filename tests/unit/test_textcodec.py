from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from procos_worker import textcodec


def test_plain_text_needs_no_escape() -> None:
    assert not textcodec.needs_escape("plain ASCII \\ with backslash")
    assert not textcodec.needs_escape("emoji 🎉 and עברית right-to-left")


def test_nul_and_lone_surrogates_need_escape() -> None:
    assert textcodec.needs_escape("a\x00b")
    assert textcodec.needs_escape("ä\x00")
    assert textcodec.needs_escape("x\ud800y")
    assert textcodec.needs_escape("\udfff")


def test_escaped_form_is_storable_and_documented() -> None:
    encoded = textcodec.encode("a\\b\x00c\ud83dd")
    assert encoded == "a\\\\b\\0c\\ud83dd"
    assert not textcodec.needs_escape(encoded)
    encoded.encode("utf-8")  # PostgreSQL can take it


# Any character, plus the awkward ones: NUL, lone surrogates, and text that looks like an escape.
_AWKWARD = st.sampled_from(["\x00", "\ud800", "\udfff", "\\", "\\0", "\\ud800", "\\\\"])


@given(st.lists(st.one_of(st.characters(), _AWKWARD)).map("".join))
def test_round_trip_is_identity_for_any_string(text: str) -> None:
    encoded = textcodec.encode(text)
    assert not textcodec.needs_escape(encoded)
    assert textcodec.decode(encoded) == text
