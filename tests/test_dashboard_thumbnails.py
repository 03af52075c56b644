"""Thumbnails of post images: path confinement to the image root and decoding limits."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from dashboard_support import REPO_ROOT  # noqa: F401  (puts the repository root on sys.path)

from app import thumbnails  # noqa: E402


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "nested").mkdir(parents=True)
    Image.new("RGB", (640, 480), "navy").save(root / "nested" / "inside.jpg")
    Image.new("RGB", (64, 64), "red").save(tmp_path / "outside.jpg")
    (root / "escape.jpg").symlink_to(tmp_path / "outside.jpg")
    (root / "alias.jpg").symlink_to(root / "nested" / "inside.jpg")
    return root


@pytest.mark.parametrize(
    "image_path",
    ["../outside.jpg", "nested/../../outside.jpg", "escape.jpg", "https://example.invalid/a.jpg", "", "a\x00b.jpg"],
)
def test_resolve_rejects_escapes(image_root, image_path):
    assert thumbnails.resolve_under_root(image_path, image_root) is None


def test_resolve_rejects_absolute_outside(image_root):
    outside = image_root.parent / "outside.jpg"

    assert thumbnails.resolve_under_root(str(outside), image_root) is None


def test_resolve_accepts_paths_inside(image_root):
    inside = image_root / "nested" / "inside.jpg"

    assert thumbnails.resolve_under_root("nested/inside.jpg", image_root) == inside
    assert thumbnails.resolve_under_root("alias.jpg", image_root) == inside
    assert thumbnails.resolve_under_root(str(inside), image_root) == inside


def test_thumbnail_from_path_shrinks_image(image_root):
    thumbnail = thumbnails.thumbnail_from_path("nested/inside.jpg", image_root)

    assert thumbnail.problem is None
    with Image.open(io.BytesIO(thumbnail.png)) as decoded:
        assert max(decoded.size) == thumbnails.THUMBNAIL_SIDE
        assert decoded.format == "PNG"


def test_thumbnail_from_path_explains_escape(image_root):
    thumbnail = thumbnails.thumbnail_from_path("escape.jpg", image_root)

    assert thumbnail.png is None
    assert "outside the image root" in thumbnail.problem


def test_thumbnail_from_path_without_root():
    thumbnail = thumbnails.thumbnail_from_path("a.jpg", None)

    assert thumbnail.png is None
    assert "--image-root" in thumbnail.problem


def test_thumbnail_from_path_missing_file(image_root):
    thumbnail = thumbnails.thumbnail_from_path("nested/absent.jpg", image_root)

    assert thumbnail.png is None
    assert "not found" in thumbnail.problem


def test_thumbnail_from_bytes_rejects_garbage():
    thumbnail = thumbnails.thumbnail_from_bytes(b"not an image at all")

    assert thumbnail.png is None
    assert "cannot be decoded" in thumbnail.problem


def test_thumbnail_from_bytes_flattens_alpha():
    buffer = io.BytesIO()
    Image.new("RGBA", (10, 10), (255, 0, 0, 0)).save(buffer, format="PNG")

    thumbnail = thumbnails.thumbnail_from_bytes(buffer.getvalue())

    with Image.open(io.BytesIO(thumbnail.png)) as decoded:
        assert decoded.mode == "RGB"
        assert decoded.getpixel((5, 5)) == (255, 255, 255)


def test_thumbnail_from_bytes_rejects_huge_canvas(monkeypatch):
    monkeypatch.setattr(thumbnails, "MAX_IMAGE_PIXELS", 50)
    buffer = io.BytesIO()
    Image.new("RGB", (10, 10), "white").save(buffer, format="PNG")

    thumbnail = thumbnails.thumbnail_from_bytes(buffer.getvalue())

    assert thumbnail.png is None
    assert "too many to preview" in thumbnail.problem
