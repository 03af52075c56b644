"""Disruption of the training data of `drf-batch train`, as in the robustness grid.

``--disruption random`` corrupts or discards a random modality of a fraction ``dr`` of the posts
of every split (train, val and test), so the model learns under disruption and is selected and
tested under the same disruption. ``--disruption fixed`` trains and selects on undisrupted posts
and disrupts ``--modality`` in every test post only. The corrupted copy of a post is the one
that `drf-batch evaluate` caches, so both commands share the encoded variants.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from drf_batch.disruption import plan_disruptions
from drf_batch.evaluation.bank import FeatureBank
from drf_batch.features import FeatureCache, Features, encode_posts

CORRUPTION_SEED = 0
"""Seed of the corrupted copy of each post; `drf-batch evaluate` uses the same one by default."""


@dataclass(frozen=True)
class TrainingDisruption:
    """A disruption applied to encoded posts before training: mode, kind, rate, modality and plan seed."""

    mode: str
    setting: str
    dr: float = 1.0
    modality: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("fixed", "random"):
            raise ValueError(f"invalid --disruption {self.mode!r}; expected fixed or random")
        if self.mode == "fixed" and self.modality is None:
            raise ValueError("--disruption fixed needs --modality image or --modality text")
        if self.mode == "random" and self.modality is not None:
            raise ValueError("--disruption random draws the modality per post; leave out --modality")
        # plan_disruptions checks setting, dr and modality when the plan is made; check them early.
        plan_disruptions([], setting=self.setting, mode=self.mode, modality=self.modality,
                         dr=1.0 if self.mode == "fixed" else self.dr, seed=self.seed)

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits whose posts are disrupted."""
        return ("test",) if self.mode == "fixed" else ("train", "val", "test")

    def to_dict(self) -> dict[str, object]:
        """Return the disruption as a JSON-serialisable mapping for the checkpoint's training record."""
        return dict(asdict(self), splits=list(self.splits), corruption_seed=CORRUPTION_SEED)

    def apply(
        self,
        features: Features,
        posts: pl.DataFrame,
        image_encoder,  # noqa: ANN001
        text_encoder,  # noqa: ANN001
        *,
        image_root: Path,
        cache: FeatureCache | None,
        progress: bool = True,
    ) -> Features:
        """Return ``features`` with the planned posts corrupted (re-encoded through the cache) or discarded."""
        from drf_batch.evaluation.pipeline import corruption_variants

        split = np.asarray(posts["split"].to_list())
        post_ids = [post_id for post_id, name in zip(features.post_ids, split) if name in self.splits]
        plan = plan_disruptions(post_ids, setting=self.setting, mode=self.mode, modality=self.modality,
                                dr=1.0 if self.mode == "fixed" else self.dr, seed=self.seed)

        corrupted = features
        if self.setting in ("C", "C+D"):
            image_variant, text_variant = corruption_variants(image_encoder, text_encoder, seed=CORRUPTION_SEED)
            corrupted = encode_posts(posts, image_encoder, text_encoder, image_root=image_root, cache=cache,
                                     image_variant=image_variant, text_variant=text_variant, progress=progress)
        bank = FeatureBank(
            post_ids=tuple(features.post_ids),
            labels=np.zeros(len(features.post_ids), dtype=np.int64),
            clean_image=features.image,
            clean_text=features.text,
            corrupted_image=corrupted.image,
            corrupted_text=corrupted.text,
            image_present=features.image_present & corrupted.image_present,
            text_present=features.text_present & corrupted.text_present,
        )
        arrays = bank.assemble(plan)
        return Features(
            post_ids=list(features.post_ids),
            image=arrays.feat_v,
            text=arrays.feat_t,
            image_present=arrays.lam_v > 0.5,
            text_present=arrays.lam_t > 0.5,
            image_errors=dict(features.image_errors),
        )
