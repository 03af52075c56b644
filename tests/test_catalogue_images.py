"""Catalogue of bad and unusual images, scored through the local runner into a real DuckDB file.

Each post carries a text, so an unreadable image must leave a text_only score with image_state
'unreadable' and the reason in image_error; readable images must score with image_state 'ok'.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import catalogue_cases as cases
from drf_batch.scoring.core import ScoringContext, score_record_batch
from scoring_fakes import FakeBundle

CAPTION = "a photo from my afternoon walk"

IMAGE_FILES = {
    "truncated_jpeg": ("truncated.jpg", cases.truncated_jpeg),
    "zero_byte_file": ("empty.jpg", lambda: b""),
    "not_an_image": ("notes.jpg", lambda: b"these are meeting notes, not a picture\n" * 10),
    "cmyk_jpeg": ("cmyk.jpg", cases.cmyk_jpeg),
    "png_16_bit": ("deep.png", cases.png_16_bit),
    "grayscale": ("gray.png", cases.grayscale_png),
    "rgba_transparent": ("rgba.png", cases.transparent_rgba_png),
    "palette_transparent": ("palette.png", cases.transparent_palette_png),
    "animated_gif": ("animated.gif", cases.animated_gif),
    "webp": ("photo.webp", cases.webp_bytes),
    "exif_rotated": ("rotated.jpg", cases.exif_rotated_jpeg),
    "one_pixel": ("dot.png", cases.one_pixel_png),
    "decompression_bomb": ("bomb.png", cases.decompression_bomb_png),
}

EXTRA_PATHS = {
    "outside_root": "../outside.png",
    "symlink_escape": "escape.png",
    "http_url": "http://127.0.0.1:9/photo.png",
    "https_url": "https://127.0.0.1:9/photo.png",
    "missing_file": "never_uploaded.png",
    "absolute_outside": None,  # filled in with the absolute path of outside.png
}


def _layout(base: Path) -> Path:
    root = base / "images"
    root.mkdir()
    for file_name, build in IMAGE_FILES.values():
        (root / file_name).write_bytes(build())
    outside = base / "outside.png"
    outside.write_bytes(cases.one_pixel_png())
    (root / "escape.png").symlink_to(outside)
    return root


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> cases.StoredRows:
    base = tmp_path_factory.mktemp("catalogue_images")
    root = _layout(base)
    paths = {case: file_name for case, (file_name, _) in IMAGE_FILES.items()}
    paths.update(EXTRA_PATHS)
    paths["absolute_outside"] = str(base / "outside.png")
    post_ids = list(paths)
    # The same broken images once more without a text: no usable modality, so they become rejects.
    for case in ("truncated_jpeg", "zero_byte_file", "not_an_image", "decompression_bomb", "missing_file", "http_url"):
        post_ids.append(f"{case}_no_text")
        paths[f"{case}_no_text"] = paths[case]
    table = pa.table(
        {
            "post_id": post_ids,
            "text": [None if post_id.endswith("_no_text") else CAPTION for post_id in post_ids],
            "image_path": [paths[post_id] for post_id in post_ids],
        }
    )
    return cases.score_rows(base, table, FakeBundle(), image_root=root, batch_size=7)


def _assert_ok(run: cases.StoredRows, post_id: str) -> None:
    row = run.scores[post_id]
    assert row["graph"] == "paired", row
    assert row["image_state"] in ("ok", "low_quality")
    assert row["image_error"] is None


def _assert_unreadable(run: cases.StoredRows, post_id: str, code: str) -> None:
    row = run.scores[post_id]
    assert row["graph"] == "text_only"
    assert row["image_state"] == "unreadable"
    assert row["text_state"] == "ok"
    assert row["image_error"].startswith(f"{code}: "), row["image_error"]


def _single_image_pixels(tmp_path: Path, payload: bytes) -> np.ndarray:
    """Score one image-only post with the core function and return the pixels the graph received."""
    bundle = FakeBundle()
    batch = pa.RecordBatch.from_pydict({"post_id": ["p"], "image_bytes": pa.array([payload], pa.binary())})
    context = ScoringContext(run_id="r", input_path="mem", image_root=tmp_path)
    scores, _ = score_record_batch(batch, bundle, context=context)
    assert scores.num_rows == 1
    return bundle.sessions["image_only"].pixels[0]


def _channel_means(pixels: np.ndarray) -> np.ndarray:
    return pixels.mean(axis=(1, 2))


def test_every_row_stored_once(image_run: cases.StoredRows) -> None:
    assert image_run.summary.rows_in == len(image_run.scores) + len(image_run.rejects)
    assert not set(image_run.scores) & set(image_run.rejects)


def test_image_truncated_jpeg(image_run: cases.StoredRows) -> None:
    _assert_unreadable(image_run, "truncated_jpeg", "truncated")


def test_image_zero_byte_file(image_run: cases.StoredRows) -> None:
    _assert_unreadable(image_run, "zero_byte_file", "empty_file")


def test_image_not_an_image(image_run: cases.StoredRows) -> None:
    _assert_unreadable(image_run, "not_an_image", "not_an_image")


def test_image_cmyk_jpeg(image_run: cases.StoredRows) -> None:
    _assert_ok(image_run, "cmyk_jpeg")


def test_image_png_16_bit(image_run: cases.StoredRows) -> None:
    _assert_ok(image_run, "png_16_bit")


def test_image_grayscale(image_run: cases.StoredRows) -> None:
    _assert_ok(image_run, "grayscale")


def test_image_rgba_transparency_on_white(image_run: cases.StoredRows, tmp_path: Path) -> None:
    _assert_ok(image_run, "rgba_transparent")
    # A fully transparent red image composites to white: every channel at its maximum, (1 - 0.5) / 0.25.
    assert _channel_means(_single_image_pixels(tmp_path, cases.transparent_rgba_png())) == pytest.approx([2.0] * 3)


def test_image_palette_transparency_on_white(image_run: cases.StoredRows, tmp_path: Path) -> None:
    _assert_ok(image_run, "palette_transparent")
    assert _channel_means(_single_image_pixels(tmp_path, cases.transparent_palette_png())) == pytest.approx([2.0] * 3)


def test_image_animated_gif_first_frame(image_run: cases.StoredRows, tmp_path: Path) -> None:
    _assert_ok(image_run, "animated_gif")
    red, green, blue = _channel_means(_single_image_pixels(tmp_path, cases.animated_gif()))
    assert red > 1.0
    assert blue < -1.0


def test_image_webp(image_run: cases.StoredRows) -> None:
    _assert_ok(image_run, "webp")


def test_image_exif_rotation_upright(image_run: cases.StoredRows, tmp_path: Path) -> None:
    _assert_ok(image_run, "exif_rotated")
    pixels = _single_image_pixels(tmp_path, cases.exif_rotated_jpeg())
    red_channel = pixels[0]
    half = red_channel.shape[1] // 2
    # Upright, blue is on the left and red on the right; as stored, red would be on top.
    assert red_channel[:, : half - 2].mean() < -1.0
    assert red_channel[:, half + 2 :].mean() > 1.0


def test_image_one_pixel(image_run: cases.StoredRows) -> None:
    _assert_ok(image_run, "one_pixel")


def test_image_decompression_bomb(image_run: cases.StoredRows) -> None:
    _assert_unreadable(image_run, "decompression_bomb", "too_many_pixels")


def test_image_path_outside_root(image_run: cases.StoredRows) -> None:
    _assert_unreadable(image_run, "outside_root", "outside_root")


def test_image_absolute_path_outside_root(image_run: cases.StoredRows) -> None:
    _assert_unreadable(image_run, "absolute_outside", "outside_root")


def test_image_symlink_escaping_root(image_run: cases.StoredRows) -> None:
    _assert_unreadable(image_run, "symlink_escape", "outside_root")


def test_image_http_url_not_fetched(image_run: cases.StoredRows) -> None:
    _assert_unreadable(image_run, "http_url", "url_not_allowed")
    _assert_unreadable(image_run, "https_url", "url_not_allowed")


def test_image_missing_file(image_run: cases.StoredRows) -> None:
    _assert_unreadable(image_run, "missing_file", "not_found")


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("truncated_jpeg", "image_truncated"),
        ("zero_byte_file", "image_empty_file"),
        ("not_an_image", "image_not_an_image"),
        ("decompression_bomb", "image_too_many_pixels"),
        ("missing_file", "image_not_found"),
        ("http_url", "image_url_not_allowed"),
    ],
)
def test_unreadable_image_without_text_rejected(image_run: cases.StoredRows, case: str, code: str) -> None:
    reject = image_run.rejects[f"{case}_no_text"]
    assert reject["reason_code"] == code
    assert "no text" in reject["reason"]
    assert f"{case}_no_text" not in image_run.scores


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    payload = b""

    def do_GET(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
        if self.path != "/photo.png":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture()
def loopback_server() -> Iterator[str]:
    _ImageHandler.payload = cases.png_bytes(cases.photo())
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_image_url_fetched_when_allowed(tmp_path: Path, loopback_server: str) -> None:
    table = pa.table(
        {
            "post_id": ["fetched", "absent"],
            "text": [CAPTION, CAPTION],
            "image_path": [f"{loopback_server}/photo.png", f"{loopback_server}/absent.png"],
        }
    )
    run = cases.score_rows(tmp_path, table, FakeBundle(), image_root=tmp_path, allow_urls=True)
    _assert_ok(run, "fetched")
    _assert_unreadable(run, "absent", "url_fetch_failed")
