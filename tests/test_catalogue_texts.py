"""Catalogue of bad and unusual texts, scored through the local runner into a real DuckDB file."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

import catalogue_cases as cases
from scoring_fakes import MAX_TOKENS, FakeBundle

LONG_TEXT = " ".join(f"word{index}" for index in range(5_000))
EMOJI_TEXT = "Best day ever 🎉🎂😀 👍🏽 family 👨‍👩‍👧"
CONTROL_TEXT = "bell\x07 and\x00 null\x1b[31m red\u200b gone"
ARABIC_TEXT = "أنا سعيد جدا بهذا اليوم الجميل"
HEBREW_TEXT = "היום היה יום נפלא בים"
MIXED_DIRECTION_TEXT = "great concert \u202eevil\u202c tonight שלום"

TEXT_CASES: dict[str, bytes | None] = {
    "null": None,
    "empty": b"",
    "whitespace_only": " \t\n\r \u3000 ".encode(),
    "too_long": LONG_TEXT.encode(),
    "emoji": EMOJI_TEXT.encode(),
    "invalid_utf8": b"caf\xe9 \xff\xfe ok bytes \xc3\x28 end",
    "gbk_bytes": "今天天气很好".encode("gbk"),
    "control_characters": CONTROL_TEXT.encode(),
    "arabic_rtl": ARABIC_TEXT.encode(),
    "hebrew_rtl": HEBREW_TEXT.encode(),
    "bidi_override": MIXED_DIRECTION_TEXT.encode(),
}


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[cases.StoredRows, FakeBundle]:
    base = tmp_path_factory.mktemp("catalogue_texts")
    root = base / "images"
    root.mkdir()
    (root / "photo.png").write_bytes(cases.png_bytes(cases.photo()))
    post_ids = list(TEXT_CASES)
    # Text-only twins: a text that is missing after normalisation leaves nothing to score.
    post_ids += [f"{case}_no_image" for case in ("null", "empty", "whitespace_only", "emoji")]
    texts = [TEXT_CASES[post_id.removesuffix("_no_image")] for post_id in post_ids]
    table = pa.table(
        {
            "post_id": post_ids,
            # A binary column lets invalid UTF-8 reach the scorer as it would come out of a dump.
            "text": pa.array(texts, pa.binary()),
            "image_path": [None if post_id.endswith("_no_image") else "photo.png" for post_id in post_ids],
        }
    )
    bundle = FakeBundle()
    return cases.score_rows(base, table, bundle, image_root=root), bundle


def _score(run: tuple[cases.StoredRows, FakeBundle], post_id: str) -> dict:
    return run[0].scores[post_id]


def test_every_row_stored_once(text_run: tuple[cases.StoredRows, FakeBundle]) -> None:
    stored, _ = text_run
    assert stored.summary.rows_in == len(stored.scores) + len(stored.rejects)


@pytest.mark.parametrize("case", ["null", "empty", "whitespace_only"])
def test_text_missing_forms_score_image_only(text_run: tuple[cases.StoredRows, FakeBundle], case: str) -> None:
    row = _score(text_run, case)
    assert row["graph"] == "image_only"
    assert row["text_state"] == "missing"
    assert row["text"] is None


@pytest.mark.parametrize("case", ["null", "empty", "whitespace_only"])
def test_text_missing_without_image_rejected(text_run: tuple[cases.StoredRows, FakeBundle], case: str) -> None:
    stored, _ = text_run
    reject = stored.rejects[f"{case}_no_image"]
    assert reject["reason_code"] == "no_modality"


def test_text_longer_than_max_tokens(text_run: tuple[cases.StoredRows, FakeBundle]) -> None:
    row = _score(text_run, "too_long")
    assert row["graph"] == "paired"
    assert row["text_state"] in ("ok", "low_quality")
    _, bundle = text_run
    widths = [call["input_ids"][1] for call in bundle.sessions["paired"].calls]
    assert max(widths) <= MAX_TOKENS


def test_text_emoji_kept(text_run: tuple[cases.StoredRows, FakeBundle]) -> None:
    assert _score(text_run, "emoji")["text"] == EMOJI_TEXT
    assert _score(text_run, "emoji_no_image")["graph"] == "text_only"


def test_text_invalid_utf8_decoded(text_run: tuple[cases.StoredRows, FakeBundle]) -> None:
    row = _score(text_run, "invalid_utf8")
    assert row["text_state"] == "ok"
    assert "ok bytes" in row["text"]
    assert "end" in row["text"]


def test_text_gbk_bytes_decoded(text_run: tuple[cases.StoredRows, FakeBundle]) -> None:
    assert _score(text_run, "gbk_bytes")["text"] == "今天天气很好"


def test_text_control_characters_removed(text_run: tuple[cases.StoredRows, FakeBundle]) -> None:
    text = _score(text_run, "control_characters")["text"]
    assert "bell" in text
    assert "red" in text
    assert not any(ord(character) < 32 or ord(character) == 127 for character in text)


def test_text_right_to_left_scripts(text_run: tuple[cases.StoredRows, FakeBundle]) -> None:
    assert _score(text_run, "arabic_rtl")["text"] == ARABIC_TEXT
    assert _score(text_run, "hebrew_rtl")["text"] == HEBREW_TEXT
    assert _score(text_run, "bidi_override")["text_state"] == "ok"


def test_text_string_column_with_same_cases(tmp_path: Path) -> None:
    """A plain string column (not binary) goes through the same decoding and normalisation."""
    table = pa.table({"post_id": ["a", "b", "c"], "text": [EMOJI_TEXT, "  \t ", ARABIC_TEXT]})
    stored = cases.score_rows(tmp_path, table, FakeBundle())
    assert stored.scores["a"]["text"] == EMOJI_TEXT
    assert stored.rejects["b"]["reason_code"] == "no_modality"
    assert stored.scores["c"]["graph"] == "text_only"
