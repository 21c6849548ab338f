"""The one arXiv id rule (server/arxiv_ids.py): which ids are accepted, their canonical form,
and the refusal that tells the agent what to send instead."""

from __future__ import annotations

import pytest

from server.arxiv_ids import parse_arxiv_id, split_arxiv_id

ACCEPTED = [
    # text an agent may send            canonical id        version
    ("2401.01234", "2401.01234", None),
    ("2401.01234v2", "2401.01234", 2),
    ("arXiv:2401.01234v2", "2401.01234", 2),
    ("arxiv:2401.01234", "2401.01234", None),
    ("ARXIV:2401.01234v12", "2401.01234", 12),
    ("  2401.01234  ", "2401.01234", None),
    ("2412.1234", "2412.1234", None),
    ("0704.0001", "0704.0001", None),
    ("hep-th/9901001", "hep-th/9901001", None),
    ("hep-th/9901001v3", "hep-th/9901001", 3),
    ("cs/0112017", "cs/0112017", None),
    ("math.GT/0309136v1", "math.GT/0309136", 1),
    ("arXiv:cond-mat/0102536", "cond-mat/0102536", None),
]

REFUSED = [
    "",
    "   ",
    "hello",
    "not-a-paper",
    "2401.123",  # too few digits after the dot
    "2401.123456",  # too many
    "2413.01234",  # month 13
    "2400.01234",  # month 00
    "2401.01234v0",  # versions start at 1
    "2401.01234v",
    "2401.01234 OR 1",
    "../etc/passwd",
    "cs/01120",  # old style needs 7 digits
    "-cs/0112017",
    "cs-/0112017",
    "CS/0112017",
    "math.gt/0309136",
    "https://evil.example/2401.01234",
    "arXiv:",
    "2401.01234\nv2",
]


@pytest.mark.parametrize(("text", "canonical", "version"), ACCEPTED)
def test_accepted_ids_and_their_canonical_form(
    text: str, canonical: str, version: int | None
) -> None:
    assert split_arxiv_id(text) == (canonical, version)
    assert parse_arxiv_id(text) == canonical


@pytest.mark.parametrize("text", REFUSED)
def test_refused_ids_say_what_to_send(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not an arXiv id\. Send a new-style id") as refusal:
        parse_arxiv_id(text)
    message = str(refusal.value)
    assert "'2401.01234'" in message and "'cs/0112017'" in message and "search_papers" in message


def test_a_long_refused_id_is_shortened_in_the_message() -> None:
    with pytest.raises(ValueError) as refusal:
        parse_arxiv_id("x" * 500)
    assert "x" * 60 + "..." in str(refusal.value)
    assert "x" * 61 not in str(refusal.value)


def test_a_non_string_is_refused() -> None:
    with pytest.raises(ValueError, match=r"must be a string such as '2401\.01234'"):
        parse_arxiv_id(1234)  # type: ignore[arg-type]


def test_the_canonical_id_is_accepted_again_unchanged() -> None:
    for text, canonical, _ in ACCEPTED:
        assert parse_arxiv_id(canonical) == canonical, text
