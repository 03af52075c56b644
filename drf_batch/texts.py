"""Text handling shared by training, evaluation and scoring: byte decoding, normalisation and
tokenisation into numpy arrays.

Real tweet dumps mix encodings: MVSA-Single contains UTF-8 files beside about 1,000 GBK files, so
decoding tries UTF-8 first, then GB18030 (a superset of GBK), and only then replaces bad bytes.
"""

from __future__ import annotations

import codecs
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np

# Whitespace control characters that normalisation turns into spaces instead of dropping.
_WHITESPACE_CONTROLS = frozenset("\t\n\r\x0b\x0c")

# Unicode categories dropped by normalize_text: control (Cc, except whitespace), unassigned
# surrogate halves (Cs, which cannot be encoded as UTF-8) and private use (Co).
_DROPPED_CATEGORIES = frozenset({"Cc", "Cs", "Co"})

# U+FEFF is a byte order mark when it starts a text and a deprecated zero-width no-break space
# elsewhere; it carries no meaning for a tokenizer.
_DROPPED_CHARACTERS = frozenset("\ufeff")


def decode_text_bytes(raw: bytes) -> str:
    """Decode text bytes: UTF-8 (a BOM is removed), else GB18030, else UTF-8 with U+FFFD.

    A UTF-16 byte order mark selects UTF-16. Strict GB18030 rejects most byte sequences that are
    not Chinese text, so Latin-1 or broken bytes end in the replacement branch.
    """
    if raw.startswith(codecs.BOM_UTF8):
        return raw[len(codecs.BOM_UTF8):].decode("utf-8", errors="replace")
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            pass
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("gb18030")
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace")


def normalize_text(text: str | None) -> str | None:
    """Normalise a text for encoding; None when nothing is left.

    Applies NFC, turns whitespace controls into spaces, drops other control characters, surrogates,
    private-use characters and U+FEFF, collapses runs of whitespace and strips both ends. Format
    characters such as the zero-width joiner (emoji sequences) and right-to-left marks are kept.
    """
    if text is None:
        return None
    if not isinstance(text, str):
        raise TypeError(f"text must be str or None, got {type(text).__name__}: {text!r:.80}")

    kept: list[str] = []
    for character in unicodedata.normalize("NFC", text):
        if character in _WHITESPACE_CONTROLS:
            kept.append(" ")
        elif character in _DROPPED_CHARACTERS or unicodedata.category(character) in _DROPPED_CATEGORIES:
            continue
        else:
            kept.append(character)
    collapsed = " ".join("".join(kept).split())
    return collapsed or None


def tokenize_texts(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise texts into int64 `input_ids` and `attention_mask` arrays of shape [B, T].

    Pads to the longest text of the batch and truncates to `max_length` tokens, special tokens
    included. `tokenizer` is a transformers fast tokenizer.
    """
    if max_length < 2:
        raise ValueError(f"max_length={max_length} leaves no room for text between the special tokens; use >= 2")
    if len(texts) == 0:
        empty = np.zeros((0, 0), dtype=np.int64)
        return empty, empty.copy()
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(
                f"texts[{index}] is {type(text).__name__}, expected str; drop missing texts "
                "(None) before tokenising, because a missing text is an absent modality"
            )

    encoded = tokenizer(
        list(texts),
        padding="longest",
        truncation=True,
        max_length=max_length,
        return_attention_mask=True,
        return_token_type_ids=False,
        return_tensors="np",
    )
    input_ids = np.ascontiguousarray(encoded["input_ids"], dtype=np.int64)
    attention_mask = np.ascontiguousarray(encoded["attention_mask"], dtype=np.int64)
    return input_ids, attention_mask
