"""The DRF head: projections, feature queues, converters, Gaussian quality, three-branch fusion
and the classifier, on top of frozen or fine-tuned image and text encoders.

Method: DRF (Distribution-based feature Recovery and Fusion), a method for robust sentiment
analysis of image-text pairs whose symbols the code uses. f_v and f_t are the image and text
features in width d. λ_v and λ_t are 1 when the modality is present.
mu and sigma are a queue's mean and scalar spread. p_v_to_t is the density of C_v→t(f_v) under
the text distribution, and the other densities are named the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from drf_batch.model.config import DRFConfig
from drf_batch.model.converters import ModalityConverter
from drf_batch.model.fusion import FusionMLP, branch_availability, branch_weights
from drf_batch.model.losses import distribution_constraint, distribution_recovery, sample_recovery
from drf_batch.model.quality import log_gaussian, log_gaussian_kernel, log_mean_density
from drf_batch.model.queues import FeatureQueue, queue_statistics

logger = logging.getLogger(__name__)

INPUT_SCALE_FLOOR = 1e-6
"""Smallest per-dimension scale used to standardise encoder features."""

MIN_QUEUE_FOR_STATISTICS = 2
"""A queue needs this many features before its spread means anything."""


@dataclass
class DRFOutput:
    """Everything one forward pass computes. Log densities are NaN where their feature is undefined:
    log_p_v and log_p_v_to_t need the image, log_p_t and log_p_t_to_v need the text."""

    logits: Tensor
    probs: Tensor
    log_p_v: Tensor
    log_p_t: Tensor
    log_p_v_to_t: Tensor
    log_p_t_to_v: Tensor
    branch_weights: Tensor
    """Weights [B, 3] of the (paired, image, text) branches in the fusion sum, 0 for an unused branch."""
    f_v: Tensor
    f_t: Tensor
    f_v_to_t: Tensor
    f_t_to_v: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)
    """Auxiliary losses of a training step (L_dis and the recovery terms); empty in eval mode."""


class DRFHead(nn.Module):
    """DRF on top of encoder features.

    `forward` trains (in train mode it updates the queues and returns the auxiliary losses) and
    evaluates. `infer` is the export path: it uses only the frozen statistics buffers and has no
    data-dependent Python control flow, so torch.onnx can trace it with λ fixed per graph.
    """

    input_mean_v: Tensor
    input_scale_v: Tensor
    input_mean_t: Tensor
    input_scale_t: Tensor
    mu_v: Tensor
    sigma_v: Tensor
    mu_t: Tensor
    sigma_t: Tensor
    enqueue_threshold_v: Tensor
    enqueue_threshold_t: Tensor
    low_quality_threshold_v: Tensor
    low_quality_threshold_t: Tensor

    def __init__(self, config: DRFConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d

        self.register_buffer("input_mean_v", torch.zeros(config.image_dim))
        self.register_buffer("input_scale_v", torch.ones(config.image_dim))
        self.register_buffer("input_mean_t", torch.zeros(config.text_dim))
        self.register_buffer("input_scale_t", torch.ones(config.text_dim))
        self.project_v = nn.Linear(config.image_dim, d)
        self.project_t = nn.Linear(config.text_dim, d)

        self.convert_v_to_t = ModalityConverter(d)
        self.convert_t_to_v = ModalityConverter(d)
        self.fusion = FusionMLP(d, config.hidden, config.dropout)
        self.classifier = nn.Linear(config.hidden, config.num_classes)

        # NOTE: the published method stores features of encoders that it fine-tunes at a learning
        # rate of 2e-5, so its queues lag the encoders only slightly. The projection here starts
        # from random weights and trains at 2e-4, so stored projected features would describe an
        # older projection. The queues therefore store encoder features and apply the current
        # projection whenever they are read. reproject_queue=False stores projected features.
        queue_dims = (config.image_dim, config.text_dim) if config.reproject_queue else (d, d)
        self.queue_v = FeatureQueue(config.queue_size, queue_dims[0])
        self.queue_t = FeatureQueue(config.queue_size, queue_dims[1])

        # Statistics used by the densities. Training refreshes them from the queues at every step;
        # freeze_statistics() fixes them for inference and export.
        self.register_buffer("mu_v", torch.zeros(d))
        self.register_buffer("sigma_v", torch.ones(()))
        self.register_buffer("mu_t", torch.zeros(d))
        self.register_buffer("sigma_t", torch.ones(()))
        self.register_buffer("enqueue_threshold_v", torch.full((), float("nan")))
        self.register_buffer("enqueue_threshold_t", torch.full((), float("nan")))
        # log p below which infer() flags a present modality as low quality; -inf flags nothing.
        self.register_buffer("low_quality_threshold_v", torch.full((), float("-inf")))
        self.register_buffer("low_quality_threshold_t", torch.full((), float("-inf")))

    # -- setup -------------------------------------------------------------------------------

    @torch.no_grad()
    def set_input_normalization(
        self, mean_v: Tensor, scale_v: Tensor, mean_t: Tensor, scale_t: Tensor
    ) -> None:
        """Standardise encoder features per dimension as (x - mean) / scale before the projections."""
        self.input_mean_v.copy_(torch.as_tensor(mean_v, dtype=torch.float32))
        self.input_scale_v.copy_(torch.as_tensor(scale_v, dtype=torch.float32).clamp_min(INPUT_SCALE_FLOOR))
        self.input_mean_t.copy_(torch.as_tensor(mean_t, dtype=torch.float32))
        self.input_scale_t.copy_(torch.as_tensor(scale_t, dtype=torch.float32).clamp_min(INPUT_SCALE_FLOOR))

    @torch.no_grad()
    def refresh_statistics(self) -> dict[str, Tensor]:
        """Copy mu, sigma and the enqueue threshold log(mean_j p_j) of each queue into the buffers.

        Returns the queue features in width d by modality ("image", "text"). A queue with fewer
        than two features leaves its buffers unchanged and is left out of the result.
        """
        queued_by_modality = {}
        for name, queue, mu, sigma, threshold in (
            ("image", self.queue_v, self.mu_v, self.sigma_v, self.enqueue_threshold_v),
            ("text", self.queue_t, self.mu_t, self.sigma_t, self.enqueue_threshold_t),
        ):
            if len(queue) < MIN_QUEUE_FOR_STATISTICS:
                continue
            queued = self.queued_features(queue)
            queue_mu, queue_sigma = queue_statistics(queued)
            mu.copy_(queue_mu)
            sigma.copy_(queue_sigma)
            threshold.copy_(log_mean_density(log_gaussian(queued, queue_mu, queue_sigma)))
            queued_by_modality[name] = queued
        return queued_by_modality

    def freeze_statistics(self) -> None:
        """Fix mu, sigma and the enqueue threshold of both queues for inference.

        Raises when a queue has too few features, because the statistics would be meaningless.
        """
        for name, queue in (("image", self.queue_v), ("text", self.queue_t)):
            if len(queue) < MIN_QUEUE_FOR_STATISTICS:
                raise RuntimeError(
                    f"the {name} feature queue contains only {len(queue)} features; train on at least "
                    f"{MIN_QUEUE_FOR_STATISTICS} samples with a present {name} before freezing"
                )
        self.refresh_statistics()

    @torch.no_grad()
    def set_low_quality_thresholds(self, image: float, text: float) -> None:
        """Set the log p below which infer() flags a present image or text as low quality."""
        self.low_quality_threshold_v.fill_(image)
        self.low_quality_threshold_t.fill_(text)

    # -- shared computation ------------------------------------------------------------------

    def project_image(self, x: Tensor) -> Tensor:
        """Map encoder image features [N, Dv] to f_v [N, d] (standardise, then project)."""
        return self.project_v((x - self.input_mean_v) / self.input_scale_v)

    def project_text(self, x: Tensor) -> Tensor:
        """Map encoder text features [N, Dt] to f_t [N, d] (standardise, then project)."""
        return self.project_t((x - self.input_mean_t) / self.input_scale_t)

    def _queue_transform(self, queue: FeatureQueue) -> Callable[[Tensor], Tensor] | None:
        if not self.config.reproject_queue:
            return None
        return self.project_image if queue is self.queue_v else self.project_text

    @torch.no_grad()
    def queued_features(self, queue: FeatureQueue) -> Tensor:
        """Return the features of a queue in width d, detached ([count, d])."""
        transform = self._queue_transform(queue)
        stored = queue.stored()
        return transform(stored) if transform is not None else stored.clone()

    def project(self, feat_v: Tensor, feat_t: Tensor, lam_v: Tensor, lam_t: Tensor) -> tuple[Tensor, Tensor]:
        """Return f_v and f_t in width d, exactly zero for absent modalities.

        Absent inputs are replaced by zeros before any arithmetic, so NaN or garbage in an absent
        slot cannot reach the output.
        """
        present_v = (lam_v > 0.5).unsqueeze(-1)
        present_t = (lam_t > 0.5).unsqueeze(-1)
        x_v = torch.where(present_v, feat_v, torch.zeros_like(feat_v))
        x_t = torch.where(present_t, feat_t, torch.zeros_like(feat_t))

        f_v = self.project_image(x_v)
        f_t = self.project_text(x_t)
        f_v = torch.where(present_v, f_v, torch.zeros_like(f_v))
        f_t = torch.where(present_t, f_t, torch.zeros_like(f_t))
        return f_v, f_t

    def _fuse(self, f_v: Tensor, f_t: Tensor, lam_v: Tensor, lam_t: Tensor) -> DRFOutput:
        config = self.config
        present_v = lam_v > 0.5
        present_t = lam_t > 0.5

        f_v_to_t = self.convert_v_to_t(f_v)
        f_t_to_v = self.convert_t_to_v(f_t)

        log_p_v = log_gaussian(f_v, self.mu_v, self.sigma_v)
        log_p_t = log_gaussian(f_t, self.mu_t, self.sigma_t)
        log_p_v_to_t = log_gaussian(f_v_to_t, self.mu_t, self.sigma_t)
        log_p_t_to_v = log_gaussian(f_t_to_v, self.mu_v, self.sigma_v)

        available = branch_availability(lam_v, lam_t, expansion=config.expansion)
        if config.quality_weights:
            density = log_gaussian_kernel if config.relative_density else log_gaussian
            log_w_v = density(f_v, self.mu_v, self.sigma_v)
            log_w_t = density(f_t, self.mu_t, self.sigma_t)
            log_w_v_to_t = density(f_v_to_t, self.mu_t, self.sigma_t)
            log_w_t_to_v = density(f_t_to_v, self.mu_v, self.sigma_v)
            log_weights = torch.stack(
                [log_w_v + log_w_t, log_w_v + log_w_v_to_t, log_w_t_to_v + log_w_t], dim=-1
            )
            if not config.quality_weight_gradient:
                log_weights = log_weights.detach()
        else:
            log_weights = torch.zeros_like(available)
        weights = branch_weights(log_weights, available, normalize=config.normalize_weights)

        # One pass of the shared MLP F over the three pairs stacked along the batch axis.
        batch = f_v.shape[0]
        fused = self.fusion(
            torch.cat([f_v, f_v, f_t_to_v], dim=0), torch.cat([f_t, f_v_to_t, f_t], dim=0)
        ).reshape(3, batch, -1)
        M = (weights.transpose(0, 1).unsqueeze(-1) * fused).sum(dim=0)

        logits = self.classifier(M)
        nan = torch.full_like(log_p_v, float("nan"))
        return DRFOutput(
            logits=logits,
            probs=torch.softmax(logits, dim=-1),
            log_p_v=torch.where(present_v, log_p_v, nan),
            log_p_t=torch.where(present_t, log_p_t, nan),
            log_p_v_to_t=torch.where(present_v, log_p_v_to_t, nan),
            log_p_t_to_v=torch.where(present_t, log_p_t_to_v, nan),
            branch_weights=weights,
            f_v=f_v,
            f_t=f_t,
            f_v_to_t=f_v_to_t,
            f_t_to_v=f_t_to_v,
        )

    # -- training and evaluation -------------------------------------------------------------

    def forward(self, feat_v: Tensor, feat_t: Tensor, lam_v: Tensor, lam_t: Tensor) -> DRFOutput:
        """Run DRF on encoder features [B, Dv] and [B, Dt] with presence masks λ [B] (0 or 1).

        In train mode this also computes the auxiliary losses and updates the queues: present
        features fill a queue unconditionally until it is full, then pass the density gate.
        """
        lam_v = self._as_mask(lam_v, feat_v)
        lam_t = self._as_mask(lam_t, feat_t)
        self._check_presence(lam_v, lam_t)
        f_v, f_t = self.project(feat_v, feat_t, lam_v, lam_t)
        if not self.training:
            return self._fuse(f_v, f_t, lam_v, lam_t)

        present_v = lam_v > 0.5
        present_t = lam_t > 0.5
        # A queue too short for statistics takes this batch first, so the densities of the very
        # first steps are defined. Those features are not enqueued a second time below.
        reproject = self.config.reproject_queue
        candidates_v = (feat_v if reproject else f_v)[present_v].detach()
        candidates_t = (feat_t if reproject else f_t)[present_t].detach()
        warmed_v = self._warm_up(self.queue_v, candidates_v)
        warmed_t = self._warm_up(self.queue_t, candidates_t)
        queued = self.refresh_statistics()

        output = self._fuse(f_v, f_t, lam_v, lam_t)
        output.losses = self._auxiliary_losses(output, lam_v, lam_t, queued)

        # The gate uses the statistics of this step, read before the optimiser moves anything.
        if not warmed_v:
            statistics_v = (self.mu_v.clone(), self.sigma_v.clone(), self.enqueue_threshold_v.clone())
            self.queue_v.enqueue(candidates_v, self._queue_transform(self.queue_v), statistics=statistics_v)
        if not warmed_t:
            statistics_t = (self.mu_t.clone(), self.sigma_t.clone(), self.enqueue_threshold_t.clone())
            self.queue_t.enqueue(candidates_t, self._queue_transform(self.queue_t), statistics=statistics_t)
        return output

    def _auxiliary_losses(
        self, output: DRFOutput, lam_v: Tensor, lam_t: Tensor, queued: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        config = self.config
        losses: dict[str, Tensor] = {}
        queues_ready = "image" in queued and "text" in queued
        if config.distribution_constraint and queues_ready:
            losses["dis"] = distribution_constraint(
                output.f_v, output.f_t, self.mu_v, self.mu_t, lam_v, lam_t
            )
        if config.sample_recovery:
            if config.recovery_feature_gradient:
                f_v, f_t = output.f_v, output.f_t
                f_v_to_t, f_t_to_v = output.f_v_to_t, output.f_t_to_v
            else:
                f_v, f_t = output.f_v.detach(), output.f_t.detach()
                f_v_to_t, f_t_to_v = self.convert_v_to_t(f_v), self.convert_t_to_v(f_t)
            losses["rec_s_v_to_t"] = sample_recovery(f_v_to_t, f_t, lam_v, lam_t)
            losses["rec_s_t_to_v"] = sample_recovery(f_t_to_v, f_v, lam_v, lam_t)
        if config.distribution_recovery and queues_ready:
            # The queued features are copies, because the enqueue after this step overwrites the
            # queue buffers in place before the backward pass.
            losses["rec_d_v_to_t"] = distribution_recovery(self.convert_v_to_t(queued["image"]), self.mu_t, self.sigma_t)
            losses["rec_d_t_to_v"] = distribution_recovery(self.convert_t_to_v(queued["text"]), self.mu_v, self.sigma_v)
        return losses

    @staticmethod
    def _warm_up(queue: FeatureQueue, features: Tensor) -> bool:
        if len(queue) >= MIN_QUEUE_FOR_STATISTICS or features.shape[0] == 0:
            return False
        queue.push(features)
        return True

    @staticmethod
    def _as_mask(lam: Tensor | float, features: Tensor) -> Tensor:
        lam = torch.as_tensor(lam, dtype=features.dtype, device=features.device)
        return lam.expand(features.shape[0]) if lam.dim() == 0 else lam

    @staticmethod
    def _check_presence(lam_v: Tensor, lam_t: Tensor) -> None:
        if bool(((lam_v <= 0.5) & (lam_t <= 0.5)).any()):
            raise ValueError(
                "a sample has neither an image nor a text (λ_v = λ_t = 0); "
                "drop such samples before calling the DRF head"
            )

    # -- export path -------------------------------------------------------------------------

    def infer(
        self, feat_v: Tensor, feat_t: Tensor, lam_v: Tensor | float, lam_t: Tensor | float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return (probs [B, C], quality [B, 4], branch_weights [B, 3], low_quality [B, 2]).

        quality is (log_p_v, log_p_t, log_p_v_to_t, log_p_t_to_v) with NaN where undefined, and
        low_quality is (image, text): log p below the frozen threshold, false for an absent
        modality. λ may be a tensor [B] or a constant. Uses only frozen buffers and never updates
        the queues, whatever the module's mode; call eval() first so dropout is off.
        """
        lam_v = self._as_mask(lam_v, feat_v)
        lam_t = self._as_mask(lam_t, feat_t)
        f_v, f_t = self.project(feat_v, feat_t, lam_v, lam_t)
        output = self._fuse(f_v, f_t, lam_v, lam_t)

        quality = torch.stack(
            [output.log_p_v, output.log_p_t, output.log_p_v_to_t, output.log_p_t_to_v], dim=-1
        )
        # NaN compares false, so an absent modality is never flagged.
        low_quality = torch.stack(
            [output.log_p_v < self.low_quality_threshold_v, output.log_p_t < self.low_quality_threshold_t],
            dim=-1,
        )
        return output.probs, quality, output.branch_weights, low_quality
