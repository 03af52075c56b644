"""Thumbnails of post images, from a path under the image root or from raw image bytes.

Paths come from the scores table, which echoes the input file, so they are untrusted: a path is only
opened when it resolves (symlinks included) to a regular file inside the image root.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

THUMBNAIL_SIDE = 224
MAX_IMAGE_BYTES = 32 * 1024 * 1024
MAX_IMAGE_PIXELS = 64_000_000


@dataclass(frozen=True)
class Thumbnail:
    """PNG bytes of a thumbnail, or the reason why there is none."""

    png: bytes | None
    problem: str | None = None


def resolve_under_root(image_path: str, root: Path) -> Path | None:
    """Return the file that `image_path` names inside `root`, or None when it would leave `root`.

    Rejects URLs, absolute paths outside the root, `..` escapes and symlinks that point outside.
    """
    if not image_path or "://" in image_path or "\x00" in image_path:
        return None
    resolved_root = root.resolve()
    candidate = (resolved_root / image_path).resolve()
    if not candidate.is_relative_to(resolved_root):
        return None
    return candidate


def thumbnail_from_bytes(data: bytes) -> Thumbnail:
    """Decode `data` as an image and shrink it to at most THUMBNAIL_SIDE pixels a side."""
    if len(data) > MAX_IMAGE_BYTES:
        return Thumbnail(None, f"image is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MiB")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                return Thumbnail(None, f"image has {image.width}x{image.height} pixels, too many to preview")
            image.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            upright = ImageOps.exif_transpose(image)
            upright.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            if upright.mode not in ("RGB", "L"):
                background = Image.new("RGB", upright.size, "white")
                rgba = upright.convert("RGBA")
                background.paste(rgba, mask=rgba.getchannel("A"))
                upright = background
            buffer = io.BytesIO()
            upright.save(buffer, format="PNG")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        return Thumbnail(None, f"image cannot be decoded: {error}")
    return Thumbnail(buffer.getvalue())


@lru_cache(maxsize=2048)
def _thumbnail_from_file(path: Path, modified_ns: int, size: int) -> Thumbnail:
    if size > MAX_IMAGE_BYTES:
        return Thumbnail(None, f"image is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MiB")
    return thumbnail_from_bytes(path.read_bytes())


def thumbnail_from_path(image_path: str, root: Path | None) -> Thumbnail:
    """Load the thumbnail of `image_path` relative to `root`, rejecting paths outside it."""
    if root is None:
        return Thumbnail(None, "image root unknown: start the dashboard with --image-root DIR")
    resolved = resolve_under_root(image_path, root)
    if resolved is None:
        return Thumbnail(None, f"image path {image_path!r} is outside the image root {root}")
    try:
        stat = resolved.stat()
    except OSError:
        return Thumbnail(None, f"image file not found under the image root: {image_path}")
    if not resolved.is_file():
        return Thumbnail(None, f"image path is not a regular file: {image_path}")
    return _thumbnail_from_file(resolved, stat.st_mtime_ns, stat.st_size)
