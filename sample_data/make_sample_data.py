"""Build sample_data/posts.parquet and sample_data/images/, the demo set that `drf-batch score` runs on.

The texts are written for this demo. The photos come from scikit-image's bundled data module, whose
docstrings mark them as public domain or CC0: chelsea (cat, CC0, Stefan van der Walt), coffee (CC0,
Rachel Michetti), astronaut (NASA, public domain), rocket (SpaceX, public domain), camera (CC0, Lav
Varshney) and hubble_deep_field (NASA, public domain). The other images are drawn here.

The generated files are committed, so scoring the demo needs neither scikit-image nor this script:

    python sample_data/make_sample_data.py
    drf-batch score sample_data/posts.parquet --image-root sample_data/images

`image_path` values are relative to sample_data/images/. The set covers every modality state:
posts with both modalities, an image only, a text only, neither (rejected), an unreadable image, a
missing image file, heavily masked and blurred images, a garbled text and one image given as bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"
LONG_SIDE = 320
JPEG_QUALITY = 85
FIRST_POST_TIME = datetime(2026, 3, 1, 8, 0, 0)


@dataclass(frozen=True)
class Post:
    text: str | None
    image: str | None
    author_id: str
    lang: str
    embed_image: bool = False


def _photo(name: str) -> Image.Image:
    from skimage import data

    pixels = getattr(data, name)()
    image = Image.fromarray(pixels)
    return image.convert("RGB")


def _shrink(image: Image.Image) -> Image.Image:
    scale = LONG_SIDE / max(image.size)
    if scale >= 1:
        return image
    size = (round(image.width * scale), round(image.height * scale))
    return image.resize(size, Image.Resampling.BICUBIC)


def _sunset() -> Image.Image:
    """A drawn sunset: a sky gradient, a sun and a dark sea."""
    width, height = 320, 200
    sky = np.zeros((height, width, 3), dtype=np.uint8)
    ramp = np.linspace(0.0, 1.0, height)[:, None]
    sky[..., 0] = (250 - 40 * ramp).astype(np.uint8)
    sky[..., 1] = (120 + 60 * ramp).astype(np.uint8)
    sky[..., 2] = (60 + 120 * ramp).astype(np.uint8)
    image = Image.fromarray(sky)
    draw = ImageDraw.Draw(image)
    draw.ellipse((130, 90, 190, 150), fill=(255, 220, 120))
    draw.rectangle((0, 130, width, height), fill=(20, 40, 80))
    return image


def _party() -> Image.Image:
    """Drawn confetti on a white background."""
    generator = np.random.default_rng(7)
    image = Image.new("RGB", (300, 300), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for _ in range(120):
        x, y = generator.integers(0, 300, size=2)
        color = tuple(int(value) for value in generator.integers(40, 255, size=3))
        draw.rectangle((int(x), int(y), int(x) + 8, int(y) + 4), fill=color)
    return image


def _masked(image: Image.Image, *, fraction: float, seed: int) -> Image.Image:
    """Black out `fraction` of the pixels at random and blur the rest: a low-quality image."""
    pixels = np.asarray(image).copy()
    generator = np.random.default_rng(seed)
    mask = generator.random(pixels.shape[:2]) < fraction
    pixels[mask] = 0
    return Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius=4))


def _jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()


def write_images() -> dict[str, bytes]:
    """Write every demo image to IMAGES and return file name -> bytes."""
    images = {
        "cat.jpg": _shrink(_photo("chelsea")),
        "coffee.jpg": _shrink(_photo("coffee")),
        "astronaut.jpg": _shrink(_photo("astronaut")),
        "rocket.jpg": _shrink(_photo("rocket")),
        "camera.jpg": _shrink(_photo("camera")),
        "deep_field.jpg": _shrink(_photo("hubble_deep_field")),
        "sunset.jpg": _sunset(),
        "confetti.jpg": _party(),
    }
    images["coffee_masked.jpg"] = _masked(images["coffee.jpg"], fraction=0.75, seed=1)
    images["cat_masked.jpg"] = _masked(images["cat.jpg"], fraction=0.8, seed=2)

    IMAGES.mkdir(parents=True, exist_ok=True)
    encoded = {name: _jpeg_bytes(image) for name, image in images.items()}
    for name, payload in encoded.items():
        (IMAGES / name).write_bytes(payload)
    # The first 600 bytes of a JPEG: a header with no complete image data behind it.
    truncated = encoded["rocket.jpg"][:600]
    (IMAGES / "truncated.jpg").write_bytes(truncated)
    encoded["truncated.jpg"] = truncated
    return encoded


POSTS: tuple[Post, ...] = (
    Post("My cat fell asleep on the keyboard again. Best coworker ever!", "cat.jpg", "u101", "en"),
    Post("Morning coffee at the new place downtown, absolutely perfect.", "coffee.jpg", "u102", "en"),
    Post("So proud of the whole crew today, what an achievement.", "astronaut.jpg", "u103", "en"),
    Post("Launch scrubbed again because of the weather. So disappointing.", "rocket.jpg", "u104", "en"),
    Post("Found my grandfather's old camera in the attic.", "camera.jpg", "u105", "en"),
    Post("Looking at this picture makes me feel very small.", "deep_field.jpg", "u106", "en"),
    Post("Sunset over the bay tonight. No filter needed.", "sunset.jpg", "u107", "en"),
    Post("Happy birthday to my little sister! 🎉🎂", "confetti.jpg", "u108", "en"),
    Post(None, "cat.jpg", "u109", "en"),
    Post("   ", "sunset.jpg", "u110", "en"),
    Post("Worst customer service I have had in years. Never again.", None, "u111", "en"),
    Post("The train is delayed by forty minutes, again.", None, "u112", "en"),
    Post("Heute war ein wunderbarer Tag am See.", None, "u113", "de"),
    Post("Check out the view from our hotel room!", "truncated.jpg", "u114", "en"),
    Post("New profile picture, what do you think?", "missing_photo.jpg", "u115", "en"),
    Post("Lovely quiet afternoon with a good book.", "coffee_masked.jpg", "u116", "en"),
    Post(None, "cat_masked.jpg", "u117", "en"),
    Post("xq zzk ### pppp @@@ vvv qqq ?? lkjh", "rocket.jpg", "u118", "en"),
    Post("El café de esta mañana estaba horrible.", "coffee.jpg", "u119", "es"),
    Post("Back at the launch site, fingers crossed for tomorrow.", "rocket.jpg", "u120", "en", True),
    Post(None, None, "u121", "en"),
    Post("Nothing special today, just a regular Tuesday.", None, "u122", "en"),
)


def write_posts(images: dict[str, bytes]) -> pa.Table:
    """Write posts.parquet from POSTS and return the table."""
    table = pa.table(
        {
            "post_id": pa.array([f"demo-{index:03d}" for index in range(1, len(POSTS) + 1)]),
            "text": pa.array([post.text for post in POSTS], pa.string()),
            "image_path": pa.array(
                [None if post.image is None or post.embed_image else post.image for post in POSTS],
                pa.string(),
            ),
            "image_bytes": pa.array(
                [images[post.image] if post.embed_image and post.image else None for post in POSTS],
                pa.binary(),
            ),
            "created_at": pa.array(
                [FIRST_POST_TIME + timedelta(hours=5 * index) for index in range(len(POSTS))],
                pa.timestamp("s"),
            ),
            "author_id": pa.array([post.author_id for post in POSTS], pa.string()),
            "lang": pa.array([post.lang for post in POSTS], pa.string()),
        }
    )
    pq.write_table(table, HERE / "posts.parquet", compression="zstd")
    return table


def main() -> None:
    images = write_images()
    table = write_posts(images)
    print(f"wrote {table.num_rows} posts to {HERE / 'posts.parquet'} and {len(images)} images to {IMAGES}")


if __name__ == "__main__":
    main()
