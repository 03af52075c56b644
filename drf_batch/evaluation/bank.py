"""Features of every post, clean and corrupted, encoded once and assembled per disruption plan.

The grid trains hundreds of heads on frozen encoder features. Encoding is the slow part, so each
post is encoded at most twice per modality: clean, and corrupted with one fixed corruption seed
per post. A disruption plan then only chooses, per post and modality, between the clean feature,
the corrupted feature and "missing" (λ = 0). Which posts a plan disrupts changes with the grid
seed, but the corrupted copy of a post does not. So the encoder never runs again for a new seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drf_batch.disruption import DisruptionPlan


@dataclass(frozen=True)
class SplitArrays:
    """Inputs of a head for one split under one disruption plan."""

    feat_v: np.ndarray
    feat_t: np.ndarray
    lam_v: np.ndarray
    lam_t: np.ndarray
    labels: np.ndarray
    post_ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.post_ids)


@dataclass(frozen=True)
class FeatureBank:
    """Clean and corrupted features of the posts of one split, row-aligned by ``post_ids``.

    ``image_present`` and ``text_present`` mark the modalities that a post has and that could be
    read. A plan cannot bring back a modality that is missing in the data.
    """

    post_ids: tuple[str, ...]
    labels: np.ndarray
    clean_image: np.ndarray
    clean_text: np.ndarray
    corrupted_image: np.ndarray
    corrupted_text: np.ndarray
    image_present: np.ndarray
    text_present: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.post_ids)
        for name in ("labels", "clean_image", "clean_text", "corrupted_image", "corrupted_text",
                     "image_present", "text_present"):
            rows = getattr(self, name).shape[0]
            if rows != n:
                raise ValueError(f"FeatureBank.{name} has {rows} rows, expected {n} (one per post id)")

    def assemble(self, plan: DisruptionPlan | None) -> SplitArrays:
        """Return the head inputs after applying ``plan`` (None leaves every post intact).

        A discarded modality gets λ = 0 and zero features. A post that would lose its only
        readable modality keeps it, because every sample needs at least one modality.
        """
        feat_v = self.clean_image.copy()
        feat_t = self.clean_text.copy()
        lam_v = self.image_present.astype(np.float32)
        lam_t = self.text_present.astype(np.float32)

        if plan is not None:
            index = {post_id: row for row, post_id in enumerate(self.post_ids)}
            for post_id, disruption in plan.by_post.items():
                row = index.get(post_id)
                if row is None:
                    continue
                if disruption.modality == "image":
                    self._disrupt(row, disruption.action, feat_v, lam_v, self.corrupted_image, lam_t)
                else:
                    self._disrupt(row, disruption.action, feat_t, lam_t, self.corrupted_text, lam_v)

        feat_v[lam_v == 0] = 0.0
        feat_t[lam_t == 0] = 0.0
        return SplitArrays(feat_v, feat_t, lam_v, lam_t, self.labels, self.post_ids)

    @staticmethod
    def _disrupt(row: int, action: str, features: np.ndarray, lam: np.ndarray, corrupted: np.ndarray,
                 lam_other: np.ndarray) -> None:
        if lam[row] == 0:
            return
        if action == "corrupt":
            features[row] = corrupted[row]
        elif lam_other[row] > 0:
            lam[row] = 0.0
