"""Text decoding (UTF-8, GB18030, invalid bytes), normalisation and tokenisation."""

from __future__ import annotations

import codecs

import numpy as np
import pytest

from drf_batch.texts import decode_text_bytes, normalize_text, tokenize_texts


def test_decode_utf8():
    assert decode_text_bytes("héllo wörld 👍".encode("utf-8")) == "héllo wörld 👍"


def test_decode_utf8_bom_removed():
    assert decode_text_bytes(codecs.BOM_UTF8 + "hello".encode("utf-8")) == "hello"


def test_decode_gbk_bytes():
    text = "今天天气很好，我们去公园"
    raw = text.encode("gbk")
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    assert decode_text_bytes(raw) == text


def test_decode_gb18030_only_characters():
    text = "欧元€和表情"
    assert decode_text_bytes(text.encode("gb18030")) == text


def test_decode_utf16_with_bom():
    assert decode_text_bytes("hello ✓".encode("utf-16")) == "hello ✓"


def test_decode_invalid_bytes_replaced():
    decoded = decode_text_bytes(b"caf\xe9 \xff ok")
    assert "\ufffd" in decoded
    assert decoded.startswith("caf")
    assert decoded.endswith(" ok")


def test_decode_empty():
    assert decode_text_bytes(b"") == ""


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ("", None),
        ("   \t\n  ", None),
        ("\x00\x01\x7f", None),
        ("  hello   \n\n world\t! ", "hello world !"),
        ("bell\x07 and nul\x00 removed", "bell and nul removed"),
        ("\ufeffbom at start", "bom at start"),
        ("line\r\nbreaks", "line breaks"),
        ("private\ue000use", "privateuse"),
    ],
)
def test_normalize_cases(raw, expected):
    assert normalize_text(raw) == expected


def test_normalize_keeps_emoji_sequences():
    family = "👨\u200d👩\u200d👧 great day 🎉"
    assert normalize_text(family) == family


def test_normalize_keeps_right_to_left_text():
    arabic = "\u200fمرحبا بالعالم"
    hebrew = "שלום עולם"
    assert normalize_text(arabic) == arabic
    assert normalize_text(hebrew) == hebrew


def test_normalize_applies_nfc():
    assert normalize_text("cafe\u0301") == "caf\u00e9"


def test_normalize_drops_lone_surrogates():
    assert normalize_text("ok\udcff") == "ok"


def test_normalize_is_idempotent():
    once = normalize_text(" a\tb \x00 c ")
    assert normalize_text(once) == once


def test_normalize_rejects_non_text():
    with pytest.raises(TypeError, match="str or None"):
        normalize_text(b"bytes")  # type: ignore[arg-type]


def test_tokenize_pads_to_longest(text_encoder):
    input_ids, attention_mask = tokenize_texts(text_encoder.tokenizer, ["short", "a somewhat longer text"], max_length=128)
    assert input_ids.dtype == np.int64
    assert attention_mask.dtype == np.int64
    assert input_ids.shape == attention_mask.shape
    assert attention_mask[1].all()
    assert attention_mask[0].sum() < attention_mask.shape[1]


def test_tokenize_truncates_to_max_length(text_encoder):
    long_text = " ".join(["word"] * 500)
    input_ids, attention_mask = tokenize_texts(text_encoder.tokenizer, [long_text, "x"], max_length=16)
    assert input_ids.shape == (2, 16)
    assert input_ids[0, -1] == text_encoder.tokenizer.sep_token_id


def test_tokenize_emoji_and_rtl(text_encoder):
    input_ids, attention_mask = tokenize_texts(text_encoder.tokenizer, ["🎉🎉", "مرحبا"], max_length=32)
    assert attention_mask.sum(axis=1).min() >= 3


def test_tokenize_empty_batch(text_encoder):
    input_ids, attention_mask = tokenize_texts(text_encoder.tokenizer, [], max_length=16)
    assert input_ids.shape == (0, 0)
    assert attention_mask.shape == (0, 0)


def test_tokenize_rejects_none(text_encoder):
    with pytest.raises(TypeError, match="absent modality"):
        tokenize_texts(text_encoder.tokenizer, ["ok", None], max_length=16)  # type: ignore[list-item]


def test_tokenize_rejects_tiny_max_length(text_encoder):
    with pytest.raises(ValueError, match="max_length"):
        tokenize_texts(text_encoder.tokenizer, ["ok"], max_length=1)


def test_decode_real_mvsa_texts(mvsa_dir):
    """Every MVSA-Single text decodes without replacement characters, GBK files included."""
    replaced = []
    for path in sorted((mvsa_dir / "texts").glob("*.txt")):
        if "\ufffd" in decode_text_bytes(path.read_bytes()):
            replaced.append(path.name)
    assert replaced == []
