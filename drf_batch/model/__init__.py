"""The DRF head and its parts: queues, Gaussian quality, losses, converters and fusion."""

from drf_batch.model.config import DRFConfig
from drf_batch.model.head import DRFHead, DRFOutput

__all__ = ["DRFConfig", "DRFHead", "DRFOutput"]
