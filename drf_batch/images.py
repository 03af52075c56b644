"""Safe image loading and preprocessing, shared by training, evaluation and scoring.

Loading resolves a path under an image root and rejects escapes. It enforces byte and pixel
limits before decoding, and it decodes fully, so a truncated file is an error, not a half-grey
image. The result is an upright RGB image: EXIF orientation applied, the first frame of an
animation, transparency composited on white, 16-bit and CMYK images scaled to 8-bit RGB.

Preprocessing uses PIL and numpy only, so scoring does not need torch.
"""

from __future__ import annotations

import io
import logging
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from drf_batch.preprocessing import ImagePreprocessing

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000  # 40 megapixels: larger than any common phone photo
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_URL_TIMEOUT_S = 10.0

URL_SCHEMES = ("http", "https")

# PIL's own decompression-bomb guard stays on as a second line of defence: it warns above
# MAX_IMAGE_PIXELS and raises above twice that. Restore it if some other code switched it off.
if Image.MAX_IMAGE_PIXELS is None:
    Image.MAX_IMAGE_PIXELS = 2 * DEFAULT_MAX_PIXELS

_RESAMPLING = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
}

_WHITE = (255, 255, 255, 255)


class ImageLoadError(ValueError):
    """An image that cannot be used, with a short machine-readable `code`.

    Codes: empty_path, invalid_path, outside_root, url_not_allowed, unsupported_scheme, not_found,
    not_a_file, empty_file, too_large, too_many_pixels, not_an_image, truncated, corrupt,
    url_fetch_failed, url_timeout.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ImageLimits:
    """Limits applied before an image is decoded.

    `max_bytes` caps the encoded file, `max_pixels` the declared width x height. URLs are fetched
    only when `allow_urls` is set, with `url_timeout_s` seconds per connection and read.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    allow_urls: bool = False
    url_timeout_s: float = DEFAULT_URL_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.max_bytes < 1 or self.url_timeout_s <= 0:
            raise ValueError(
                f"invalid image limits {self}; expected max_pixels >= 1, max_bytes >= 1, url_timeout_s > 0"
            )


DEFAULT_IMAGE_LIMITS = ImageLimits()


def is_url(reference: str) -> bool:
    """Return True when `reference` has a URL scheme such as http://, https:// or file://."""
    scheme = urlsplit(reference.strip()).scheme
    # A one-letter scheme is a Windows drive ("C:\\..."), not a URL.
    return len(scheme) > 1 and "://" in reference


def resolve_image_path(path: str, root: Path, *, limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> Path:
    """Resolve an image path under `root` and reject anything that leaves it.

    Relative paths are taken relative to `root`. Absolute paths are accepted only when they lie
    inside `root`. `..` components and symlinks are resolved first, so neither can escape.
    URLs are rejected here: use `read_image_bytes` for those, with `limits.allow_urls`.
    """
    reference = path.strip() if isinstance(path, str) else ""
    if not reference:
        raise ImageLoadError("empty_path", "image path is empty; give a path relative to the image root")
    if "\x00" in reference:
        raise ImageLoadError("invalid_path", f"image path {reference!r} contains a NUL byte")
    if is_url(reference):
        scheme = urlsplit(reference).scheme.lower()
        if scheme not in URL_SCHEMES:
            raise ImageLoadError(
                "unsupported_scheme",
                f"image path {reference!r} uses the scheme {scheme!r}; only files under the image root "
                "and, when allowed, http(s) URLs are supported",
            )
        if not limits.allow_urls:
            raise ImageLoadError(
                "url_not_allowed",
                f"image path {reference!r} is a URL and URL fetching is off; download the images under "
                "the image root, or allow URLs explicitly",
            )
        raise ImageLoadError(
            "url_not_allowed",
            f"image path {reference!r} is a URL; read it with read_image_bytes, not resolve_image_path",
        )

    root_resolved = Path(root).resolve()
    candidate = Path(reference)
    if not candidate.is_absolute():
        candidate = root_resolved / candidate
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root_resolved):
        raise ImageLoadError(
            "outside_root",
            f"image path {reference!r} resolves to {resolved}, outside the image root {root_resolved}; "
            "use a path inside the root (symlinks and '..' are followed before this check)",
        )
    if not resolved.exists():
        raise ImageLoadError("not_found", f"image file not found: {resolved} (from {reference!r})")
    if not resolved.is_file():
        raise ImageLoadError("not_a_file", f"image path {reference!r} is not a regular file: {resolved}")
    return resolved


def read_image_file(path: Path, *, limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> bytes:
    """Read an image file's bytes, rejecting empty files and files over `limits.max_bytes`."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageLoadError("not_found", f"image file not found: {path}") from None
    if size == 0:
        raise ImageLoadError("empty_file", f"image file {path} is empty (0 bytes)")
    if size > limits.max_bytes:
        raise ImageLoadError(
            "too_large",
            f"image file {path} has {size} bytes, over the limit of {limits.max_bytes}; "
            "shrink the image or raise max_bytes",
        )
    with path.open("rb") as handle:
        # Read one byte past the limit so that a file that grew after stat() is still caught.
        raw = handle.read(limits.max_bytes + 1)
    _check_byte_count(raw, limits, str(path))
    return raw


def fetch_image_url(url: str, *, limits: ImageLimits) -> bytes:
    """Download an http(s) image with a timeout and a size limit; only when `limits.allow_urls`."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in URL_SCHEMES:
        raise ImageLoadError("unsupported_scheme", f"image URL {url!r} is not http(s)")
    if not limits.allow_urls:
        raise ImageLoadError(
            "url_not_allowed",
            f"image path {url!r} is a URL and URL fetching is off; allow URLs explicitly to fetch it",
        )

    # Only HTTP(S) handlers, so a redirect cannot lead to file:// or ftp://, and no proxy lookup.
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPRedirectHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    request = urllib.request.Request(url, headers={"User-Agent": "drf-batch"})
    started = time.monotonic()
    try:
        with opener.open(request, timeout=limits.url_timeout_s) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes:
                raise ImageLoadError(
                    "too_large",
                    f"image URL {url!r} declares {declared} bytes, over the limit of {limits.max_bytes}",
                )
            raw = _read_before_deadline(response, limits, url, started)
    except TimeoutError:
        raise ImageLoadError(
            "url_timeout", f"image URL {url!r} timed out after {limits.url_timeout_s} s"
        ) from None
    except urllib.error.HTTPError as error:
        raise ImageLoadError("url_fetch_failed", f"image URL {url!r} returned HTTP {error.code}") from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise ImageLoadError(
                "url_timeout", f"image URL {url!r} timed out after {limits.url_timeout_s} s"
            ) from None
        raise ImageLoadError("url_fetch_failed", f"image URL {url!r} could not be fetched: {error.reason}") from None
    except OSError as error:
        raise ImageLoadError("url_fetch_failed", f"image URL {url!r} could not be fetched: {error}") from None
    _check_byte_count(raw, limits, url)
    return raw


def _read_before_deadline(response: Any, limits: ImageLimits, url: str, started: float) -> bytes:
    """Read at most `limits.max_bytes + 1` bytes of the body, raising url_timeout once
    `limits.url_timeout_s` have passed since the request started.

    The socket timeout alone bounds each read, so a server sending one byte a second would
    never time out. NOTE: the deadline is checked between reads, so a run can overshoot it by
    up to one socket timeout, and slow response headers are bounded only per read.
    """
    chunks: list[bytes] = []
    remaining = limits.max_bytes + 1
    while remaining > 0:
        if time.monotonic() - started > limits.url_timeout_s:
            raise ImageLoadError("url_timeout", f"image URL {url!r} timed out after {limits.url_timeout_s} s")
        chunk = response.read1(min(remaining, 64 * 1024))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_image_bytes(reference: str, *, root: Path, limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> bytes:
    """Read the bytes of an image given as a path under `root` or, when allowed, an http(s) URL."""
    if isinstance(reference, str) and is_url(reference.strip()):
        url = reference.strip()
        if urlsplit(url).scheme.lower() in URL_SCHEMES and limits.allow_urls:
            return fetch_image_url(url, limits=limits)
    return read_image_file(resolve_image_path(reference, root, limits=limits), limits=limits)


def _check_byte_count(raw: bytes, limits: ImageLimits, source: str) -> None:
    if len(raw) == 0:
        raise ImageLoadError("empty_file", f"image {source} is empty (0 bytes)")
    if len(raw) > limits.max_bytes:
        raise ImageLoadError(
            "too_large",
            f"image {source} has more than {limits.max_bytes} bytes; shrink the image or raise max_bytes",
        )


def load_image(source: bytes | Path, *, limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> Image.Image:
    """Decode an image into an upright RGB `PIL.Image`, or raise `ImageLoadError`.

    `source` is the encoded bytes or a path (already resolved with `resolve_image_path`).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        raw = bytes(source)
        label = f"<{len(raw)} bytes>"
        _check_byte_count(raw, limits, label)
    else:
        label = str(source)
        raw = read_image_file(Path(source), limits=limits)

    image = _open_checked(raw, limits, label)
    image = _decode_first_frame(image, label)
    image = _upright(image)
    return to_rgb(image)


_ICON_MAGICS = (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00")  # ICO, CUR
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _icon_entry_sizes(raw: bytes) -> list[tuple[int, int]]:
    """Return the (width, height) of every image in an ICO or CUR file, read from the headers only.

    The 16-byte directory entries store sizes in one byte each, so the embedded PNG's IHDR or
    the BMP info header gives the real size. Entries whose data lies outside `raw` are skipped,
    and Pillow reports those files as corrupt.
    """
    count = int.from_bytes(raw[4:6], "little")
    sizes: list[tuple[int, int]] = []
    for index in range(count):
        entry = raw[6 + 16 * index : 22 + 16 * index]
        if len(entry) < 16:
            break
        sizes.append((entry[0] or 256, entry[1] or 256))
        offset = int.from_bytes(entry[12:16], "little")
        data = raw[offset : offset + 24]
        if len(data) < 24:
            continue
        if data[:8] == _PNG_SIGNATURE:
            sizes.append((int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")))
        else:
            # BITMAPINFOHEADER: the height covers the colour and the AND mask, so it is doubled.
            width = abs(int.from_bytes(data[4:8], "little", signed=True))
            height = abs(int.from_bytes(data[8:12], "little", signed=True)) // 2
            sizes.append((width, height))
    return sizes


def _check_icon_pixels(raw: bytes, limits: ImageLimits, label: str) -> None:
    """Reject an ICO or CUR file with an image over `limits.max_pixels` before Pillow opens it.

    Pillow's ICO plugin decodes the largest embedded image inside `Image.open` (Pillow
    13.0 does), so the declared-size check after opening comes too late for icons.
    """
    if raw[:4] not in _ICON_MAGICS:
        return
    for width, height in _icon_entry_sizes(raw):
        if width * height > limits.max_pixels:
            raise ImageLoadError(
                "too_many_pixels",
                f"icon image {label} contains a {width}x{height} = {width * height} pixel image, over "
                f"the limit of {limits.max_pixels}; shrink the image or raise max_pixels",
            )


def _open_checked(raw: bytes, limits: ImageLimits, label: str) -> Image.Image:
    """Open (without decoding) and check the declared size against `limits.max_pixels`."""
    _check_icon_pixels(raw, limits, label)
    try:
        with warnings.catch_warnings():
            # Our own limit below decides; PIL's warning between its limit and twice it is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError as error:
        raise ImageLoadError("too_many_pixels", f"image {label} declares too many pixels: {error}") from None
    except UnidentifiedImageError:
        raise ImageLoadError(
            "not_an_image",
            f"image {label} is not in an image format that Pillow can read (starts with {raw[:8]!r})",
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError("corrupt", f"image {label} has an unreadable header: {error}") from None

    width, height = image.size
    if width < 1 or height < 1:
        raise ImageLoadError("corrupt", f"image {label} declares an empty size {width}x{height}")
    if width * height > limits.max_pixels:
        raise ImageLoadError(
            "too_many_pixels",
            f"image {label} declares {width}x{height} = {width * height} pixels, over the limit of "
            f"{limits.max_pixels}; shrink the image or raise max_pixels",
        )
    return image


def _decode_first_frame(image: Image.Image, label: str) -> Image.Image:
    """Decode the first frame completely; a truncated or corrupt stream raises ImageLoadError."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # NOTE: with this global switched on (by some other library), Pillow pads truncated files
        # with grey instead of raising, and this module cannot tell them apart.
        logger.debug("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on; truncated images are not detected")
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image.load()
    except Image.DecompressionBombError as error:
        raise ImageLoadError("too_many_pixels", f"image {label} decodes to too many pixels: {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        message = str(error)
        code = "truncated" if "truncated" in message or "broken data stream" in message else "corrupt"
        raise ImageLoadError(code, f"image {label} could not be decoded ({code}): {message}") from None
    return image


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a malformed EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError) as error:
        logger.debug("ignoring unreadable EXIF orientation: %s", error)
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency on white."""
    mode = image.mode

    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        image = _integer_to_l(image)
        mode = image.mode
    elif mode == "F":
        image = _float_to_l(image)
        mode = image.mode

    has_transparency = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_transparency:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return image
    # CMYK (Pillow undoes Adobe's inverted CMYK), YCbCr, LAB, HSV, L, 1 and P without transparency.
    return image.convert("RGB")


def _integer_to_l(image: Image.Image) -> Image.Image:
    """Scale a 16-bit (or 32-bit integer) grayscale image to 8 bits, keeping the full range."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or values.max(initial=0) > 255:
        # 16-bit samples: 65535 maps to 255, so the ratio is exactly 257.
        values = np.clip(values, 0, 65535) / 257.0
    scaled = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled)


def _float_to_l(image: Image.Image) -> Image.Image:
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    if values.max(initial=0) <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def preprocess_image(image: Image.Image, spec: ImagePreprocessing) -> np.ndarray:
    """Resize the shorter side to `spec.resize`, center-crop `spec.size`, normalise: float32 [3, S, S].

    The crop is computed in source coordinates and resampled in one step (`Image.resize` with a
    box), so a very wide or tall image never becomes a huge intermediate.
    """
    if image.mode != "RGB":
        image = to_rgb(image)
    width, height = image.size
    scale = spec.resize / min(width, height)
    # Size of the resized image, truncated to whole pixels as torchvision's Resize does.
    resized_width = max(spec.size, int(width * scale)) if width > height else spec.resize
    resized_height = max(spec.size, int(height * scale)) if height >= width else spec.resize
    left = (resized_width - spec.size) / 2.0
    top = (resized_height - spec.size) / 2.0
    left, top = float(round(left)), float(round(top))
    scale_x = width / resized_width
    scale_y = height / resized_height
    box = (
        left * scale_x,
        top * scale_y,
        (left + spec.size) * scale_x,
        (top + spec.size) * scale_y,
    )
    cropped = image.resize((spec.size, spec.size), _RESAMPLING[spec.interpolation], box=box)

    pixels = np.asarray(cropped, dtype=np.float32) * np.float32(1.0 / 255.0)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    normalised = (pixels - mean) / std
    return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)


def preprocess_images(images: list[Image.Image], spec: ImagePreprocessing) -> np.ndarray:
    """Preprocess a list of images into one float32 batch [B, 3, S, S]."""
    if not images:
        return np.zeros((0, 3, spec.size, spec.size), dtype=np.float32)
    return np.stack([preprocess_image(image, spec) for image in images])
