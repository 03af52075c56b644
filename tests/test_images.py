"""Safe image loading (paths, limits, formats, URLs on a loopback server) and preprocessing."""

from __future__ import annotations

import http.server
import io
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from drf_batch.encoders import ImagePreprocessing
from drf_batch.images import (
    ImageLimits,
    ImageLoadError,
    fetch_image_url,
    load_image,
    preprocess_image,
    preprocess_images,
    read_image_bytes,
    resolve_image_path,
)

SPEC = ImagePreprocessing(size=224, resize=256, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def _encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def _jpeg(size=(64, 48), color=RED) -> bytes:
    return _encode(Image.new("RGB", size, color), "JPEG", quality=95)


def _load_code(source) -> str:
    with pytest.raises(ImageLoadError) as caught:
        load_image(source)
    return caught.value.code


def _close(pixel, expected, tolerance=8) -> bool:
    return all(abs(int(a) - int(b)) <= tolerance for a, b in zip(pixel, expected))


# Decoding and formats


def test_load_jpeg_returns_rgb():
    image = load_image(_jpeg())
    assert image.mode == "RGB"
    assert image.size == (64, 48)
    assert _close(image.getpixel((10, 10)), RED)


def test_load_path_and_bytes_agree(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(_jpeg())
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(load_image(path.read_bytes())))


def test_load_truncated_jpeg_is_error():
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8))
    raw = _encode(noisy, "JPEG", quality=90)
    assert _load_code(raw[: len(raw) // 2]) == "truncated"


def test_load_truncated_png_is_error():
    noisy = Image.fromarray(np.random.default_rng(1).integers(0, 255, (128, 128, 3), dtype=np.uint8))
    raw = _encode(noisy, "PNG")
    assert _load_code(raw[: len(raw) // 2]) in ("truncated", "corrupt")


def test_load_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert _load_code(path) == "empty_file"
    assert _load_code(b"") == "empty_file"


def test_load_not_an_image():
    with pytest.raises(ImageLoadError) as caught:
        load_image(b"this is plain text, not a picture")
    assert caught.value.code == "not_an_image"
    assert "this is " in str(caught.value)


def test_load_cmyk_jpeg():
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # full magenta + yellow = red
    image = load_image(_encode(cmyk, "JPEG", quality=95))
    assert image.mode == "RGB"
    assert _close(image.getpixel((16, 16)), RED, tolerance=20)


def test_load_16bit_png_scales_to_8bit():
    values = np.array([[0, 1000, 32896, 65535]], dtype=np.uint16)
    raw = _encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(raw)).mode.startswith("I")
    image = load_image(raw)
    row = np.asarray(image)[0, :, 0]
    # 65535 / 257 = 255, 32896 / 257 = 128, 1000 / 257 = 3.9; a plain convert would clip 1000 to 255.
    assert row.tolist() == [0, 4, 128, 255]


def test_load_grayscale_has_equal_channels():
    image = load_image(_encode(Image.new("L", (8, 8), 77), "PNG"))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (77, 77, 77)


def test_load_rgba_composites_on_white():
    rgba = Image.new("RGBA", (4, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (255, 0, 0, 255))
    rgba.putpixel((2, 0), (0, 0, 0, 128))
    image = load_image(_encode(rgba, "PNG"))
    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((1, 0)) == RED
    assert _close(image.getpixel((2, 0)), (127, 127, 127), tolerance=2)


def test_load_la_composites_on_white():
    image = load_image(_encode(Image.new("LA", (2, 2), (0, 0)), "PNG"))
    assert image.getpixel((0, 0)) == WHITE


def test_load_palette_transparency_on_white():
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((1, 1), 1)
    raw = _encode(palette, "PNG", transparency=0)
    image = load_image(raw)
    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((1, 1)) == RED


def test_load_animated_gif_first_frame():
    frames = [Image.new("RGB", (16, 16), color) for color in (RED, BLUE, (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    raw = buffer.getvalue()
    assert Image.open(io.BytesIO(raw)).n_frames == 3
    image = load_image(raw)
    assert _close(image.getpixel((8, 8)), RED)


@pytest.mark.skipif(not features.check("webp"), reason="this Pillow build has no WebP support")
def test_load_webp():
    image = load_image(_encode(Image.new("RGB", (20, 10), BLUE), "WEBP", quality=90))
    assert image.size == (20, 10)
    assert _close(image.getpixel((10, 5)), BLUE, tolerance=12)


def test_load_exif_rotated_is_upright():
    # Stored 40 wide x 20 high, left half red; orientation 6 means "rotate 90 degrees clockwise to view".
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    image = load_image(_encode(stored, "JPEG", quality=95, exif=exif))
    assert image.size == (20, 40)
    assert _close(image.getpixel((10, 5)), RED, tolerance=20)
    assert _close(image.getpixel((10, 35)), BLUE, tolerance=20)


def test_load_one_pixel_image():
    image = load_image(_encode(Image.new("RGB", (1, 1), RED), "PNG"))
    assert image.size == (1, 1)
    pixels = preprocess_image(image, SPEC)
    assert pixels.shape == (3, 224, 224)
    np.testing.assert_allclose(pixels[:, 100, 100], [1.0, -1.0, -1.0], atol=1e-6)


def _png_with_declared_size(width: int, height: int) -> bytes:
    """A PNG whose header declares `width` x `height` but whose data is tiny."""
    raw = _encode(Image.new("L", (1, 1), 0), "PNG")
    ihdr_start = 8
    length = struct.unpack(">I", raw[ihdr_start:ihdr_start + 4])[0]
    body = bytearray(raw[ihdr_start + 4:ihdr_start + 8 + length])  # chunk type + data
    body[4:12] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(bytes(body)) & 0xFFFFFFFF)
    return raw[:ihdr_start + 4] + bytes(body) + crc + raw[ihdr_start + 12 + length:]


def test_load_decompression_bomb_rejected_before_decode():
    bomb = _png_with_declared_size(100_000, 100_000)
    started = time.perf_counter()
    with pytest.raises(ImageLoadError) as caught:
        load_image(bomb)
    assert caught.value.code == "too_many_pixels"
    assert time.perf_counter() - started < 1.0


def test_load_pixel_limit_applies():
    raw = _encode(Image.new("RGB", (20, 20), RED), "PNG")
    with pytest.raises(ImageLoadError) as caught:
        load_image(raw, limits=ImageLimits(max_pixels=100))
    assert caught.value.code == "too_many_pixels"
    assert "20x20" in str(caught.value)


def _ico_with_png(width: int, height: int) -> bytes:
    """A one-entry ICO file whose image is an embedded RGBA PNG of `width` x `height`."""
    png = _encode(Image.new("RGBA", (width, height), (10, 20, 30, 255)), "PNG")
    header = struct.pack("<HHH", 0, 1, 1)
    # Directory entry: sizes of 256 and up are stored as 0, then colours, reserved, planes, bpp, size, offset.
    entry = struct.pack("<BBBBHHII", width % 256, height % 256, 0, 0, 1, 32, len(png), 6 + 16)
    return header + entry + png


def test_load_ico_pixel_limit_before_open(monkeypatch):
    icon = _ico_with_png(300, 300)

    def fail_open(*args, **kwargs):
        raise AssertionError("Image.open ran on an icon over the pixel limit")

    monkeypatch.setattr(Image, "open", fail_open)
    with pytest.raises(ImageLoadError) as caught:
        load_image(icon, limits=ImageLimits(max_pixels=200 * 200))
    assert caught.value.code == "too_many_pixels"
    assert "300x300" in str(caught.value)


def test_load_ico_within_limit():
    assert load_image(_ico_with_png(48, 40)).size == (48, 40)
    saved = _encode(Image.new("RGB", (32, 32), RED), "ICO", sizes=[(32, 32)])
    assert load_image(saved, limits=ImageLimits(max_pixels=32 * 32)).size == (32, 32)
    bitmap = _encode(Image.new("RGB", (32, 32), RED), "ICO", sizes=[(32, 32)], bitmap_format="bmp")
    assert load_image(bitmap, limits=ImageLimits(max_pixels=32 * 32)).size == (32, 32)


def test_load_byte_limit_applies(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(_jpeg())
    with pytest.raises(ImageLoadError) as caught:
        load_image(path, limits=ImageLimits(max_bytes=100))
    assert caught.value.code == "too_large"


def test_pil_guard_stays_enabled():
    assert Image.MAX_IMAGE_PIXELS is not None


# Paths under a root


@pytest.fixture
def image_root(tmp_path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.jpg").write_bytes(_jpeg())
    (tmp_path / "outside.jpg").write_bytes(_jpeg())
    return root


def _resolve_code(path: str, root: Path, **limits) -> str:
    with pytest.raises(ImageLoadError) as caught:
        resolve_image_path(path, root, limits=ImageLimits(**limits))
    return caught.value.code


def test_resolve_relative_path(image_root):
    assert resolve_image_path("sub/a.jpg", image_root) == (image_root / "sub" / "a.jpg").resolve()


def test_resolve_absolute_inside_root(image_root):
    inside = str((image_root / "sub" / "a.jpg").resolve())
    assert resolve_image_path(inside, image_root) == Path(inside)


def test_resolve_absolute_outside_root(image_root, tmp_path):
    assert _resolve_code(str(tmp_path / "outside.jpg"), image_root) == "outside_root"


def test_resolve_dotdot_escape(image_root):
    assert _resolve_code("../outside.jpg", image_root) == "outside_root"
    assert _resolve_code("sub/../../outside.jpg", image_root) == "outside_root"


def test_resolve_dotdot_inside_root(image_root):
    assert resolve_image_path("sub/../sub/a.jpg", image_root).name == "a.jpg"


def test_resolve_symlink_escape(image_root, tmp_path):
    os.symlink(tmp_path / "outside.jpg", image_root / "link.jpg")
    os.symlink(tmp_path, image_root / "linkdir")
    assert _resolve_code("link.jpg", image_root) == "outside_root"
    assert _resolve_code("linkdir/outside.jpg", image_root) == "outside_root"


def test_resolve_symlink_inside_root(image_root):
    os.symlink(image_root / "sub" / "a.jpg", image_root / "alias.jpg")
    assert resolve_image_path("alias.jpg", image_root) == (image_root / "sub" / "a.jpg").resolve()


def test_resolve_missing_and_directory(image_root):
    assert _resolve_code("sub/missing.jpg", image_root) == "not_found"
    assert _resolve_code("sub", image_root) == "not_a_file"
    assert _resolve_code("   ", image_root) == "empty_path"
    assert _resolve_code("a\x00b.jpg", image_root) == "invalid_path"


def test_resolve_urls_rejected(image_root):
    assert _resolve_code("http://127.0.0.1/a.jpg", image_root) == "url_not_allowed"
    assert _resolve_code("https://127.0.0.1/a.jpg", image_root) == "url_not_allowed"
    assert _resolve_code("file:///etc/hostname", image_root) == "unsupported_scheme"
    assert _resolve_code("ftp://127.0.0.1/a.jpg", image_root, allow_urls=True) == "unsupported_scheme"


def test_resolve_error_names_value_and_root(image_root):
    with pytest.raises(ImageLoadError) as caught:
        resolve_image_path("../outside.jpg", image_root)
    assert "../outside.jpg" in str(caught.value)
    assert str(image_root.resolve()) in str(caught.value)


# URLs, only against a loopback server started here


class _Handler(http.server.BaseHTTPRequestHandler):
    image = _jpeg()
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        type(self).requests.append(self.path)
        if self.path == "/image.jpg":
            self._reply(200, self.image)
        elif self.path == "/slow.jpg":
            time.sleep(2.0)
            self._reply(200, self.image)
        elif self.path == "/drip.jpg":
            self._drip(self.image)
        elif self.path == "/to-file":
            self.send_response(302)
            self.send_header("Location", "file:///etc/hostname")
            self.end_headers()
        else:
            self._reply(404, b"not found")

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _drip(self, body: bytes) -> None:
        """Send one byte every 0.1 s, so each socket read succeeds but the whole body takes minutes."""
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for index in range(len(body)):
                self.wfile.write(body[index : index + 1])
                self.wfile.flush()
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture
def loopback_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Handler.requests = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_url_not_fetched_without_opt_in(loopback_server, tmp_path):
    with pytest.raises(ImageLoadError) as caught:
        read_image_bytes(f"{loopback_server}/image.jpg", root=tmp_path)
    assert caught.value.code == "url_not_allowed"
    assert _Handler.requests == []


def test_url_fetched_with_opt_in(loopback_server, tmp_path):
    raw = read_image_bytes(f"{loopback_server}/image.jpg", root=tmp_path, limits=ImageLimits(allow_urls=True))
    assert raw == _Handler.image
    assert load_image(raw).size == (64, 48)


def test_url_size_limit(loopback_server):
    with pytest.raises(ImageLoadError) as caught:
        fetch_image_url(f"{loopback_server}/image.jpg", limits=ImageLimits(allow_urls=True, max_bytes=10))
    assert caught.value.code == "too_large"


def test_url_http_error(loopback_server):
    with pytest.raises(ImageLoadError) as caught:
        fetch_image_url(f"{loopback_server}/missing.jpg", limits=ImageLimits(allow_urls=True))
    assert caught.value.code == "url_fetch_failed"
    assert "404" in str(caught.value)


def test_url_timeout(loopback_server):
    started = time.perf_counter()
    with pytest.raises(ImageLoadError) as caught:
        fetch_image_url(f"{loopback_server}/slow.jpg", limits=ImageLimits(allow_urls=True, url_timeout_s=0.3))
    assert caught.value.code == "url_timeout"
    assert time.perf_counter() - started < 1.5


def test_url_total_timeout_on_drip(loopback_server):
    started = time.perf_counter()
    with pytest.raises(ImageLoadError) as caught:
        fetch_image_url(f"{loopback_server}/drip.jpg", limits=ImageLimits(allow_urls=True, url_timeout_s=1.0))
    assert caught.value.code == "url_timeout"
    assert time.perf_counter() - started < 3.0


def test_url_redirect_to_file_rejected(loopback_server):
    with pytest.raises(ImageLoadError) as caught:
        fetch_image_url(f"{loopback_server}/to-file", limits=ImageLimits(allow_urls=True))
    assert caught.value.code == "url_fetch_failed"


# Preprocessing


def test_preprocess_shape_dtype_and_values():
    pixels = preprocess_image(Image.new("RGB", (300, 200), (255, 128, 0)), SPEC)
    assert pixels.shape == (3, 224, 224)
    assert pixels.dtype == np.float32
    assert pixels.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(pixels[:, 50, 50], [1.0, 128 / 255 / 0.5 - 1.0, -1.0], atol=1e-5)


def test_preprocess_center_crop_of_wide_image():
    # 3:1 image: red | blue | red. After resizing the height to 256, the center 224 columns are blue.
    wide = Image.new("RGB", (300, 100), RED)
    wide.paste(BLUE, (100, 0, 200, 100))
    pixels = preprocess_image(wide, SPEC)
    assert pixels[2, 112, 0] > 0.9
    assert pixels[2, 112, 223] > 0.9
    assert pixels[0, 112, 112] < -0.9


def test_preprocess_matches_resize_then_crop():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (180, 320, 3), dtype=np.uint8)).resize((320, 180))
    pixels = preprocess_image(image, SPEC)

    width = int(320 * 256 / 180)
    resized = image.resize((width, 256), Image.Resampling.BICUBIC)
    left = round((width - 224) / 2)
    top = round((256 - 224) / 2)
    reference = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
    reference = ((reference - 0.5) / 0.5).transpose(2, 0, 1)
    assert float(np.abs(pixels - reference).mean()) < 0.02


def test_preprocess_extreme_aspect_ratio():
    started = time.perf_counter()
    pixels = preprocess_image(Image.new("RGB", (1, 20_000), RED), SPEC)
    assert pixels.shape == (3, 224, 224)
    assert time.perf_counter() - started < 2.0


def test_preprocess_converts_non_rgb_input():
    pixels = preprocess_image(Image.new("L", (50, 50), 255), SPEC)
    np.testing.assert_allclose(pixels[:, 0, 0], [1.0, 1.0, 1.0], atol=1e-6)


def test_preprocess_images_batches():
    batch = preprocess_images([Image.new("RGB", (10, 10)), Image.new("RGB", (30, 20))], SPEC)
    assert batch.shape == (2, 3, 224, 224)
    assert preprocess_images([], SPEC).shape == (0, 3, 224, 224)
