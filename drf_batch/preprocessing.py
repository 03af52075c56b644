"""Image preprocessing settings shared by the encoders, the exported bundles and scoring.

This module imports neither torch nor onnxruntime, so that scoring can use it on its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Interpolation = Literal["bicubic", "bilinear"]
INTERPOLATIONS: tuple[str, ...] = ("bicubic", "bilinear")


@dataclass(frozen=True)
class ImagePreprocessing:
    """Preprocessing that turns an RGB image into the encoder's input tensor.

    The shorter side is resized to `resize` pixels with `interpolation`, the center `size` x `size`
    square is cropped, and each channel is scaled to [0, 1] and normalised with `mean` and `std`.
    """

    size: int
    resize: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.size < 1 or self.resize < self.size:
            raise ValueError(
                f"invalid image preprocessing: size={self.size}, resize={self.resize}; "
                "expected size >= 1 and resize >= size"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"invalid interpolation {self.interpolation!r}; expected one of {INTERPOLATIONS}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(
                f"invalid mean/std {self.mean}/{self.std}; expected three values each, std > 0"
            )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImagePreprocessing:
        return cls(
            size=int(data["size"]),
            resize=int(data["resize"]),
            interpolation=str(data["interpolation"]),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
        )
