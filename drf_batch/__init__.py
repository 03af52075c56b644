"""drf-batch: DRF multimodal sentiment models, from training to batch scoring in DuckDB."""

__version__ = "0.1.0"
