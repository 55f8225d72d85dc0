"""Sample product pictures and the deterministic "edit" the emulator applies with Pillow."""

from __future__ import annotations

import hashlib
import io
from functools import cache

from PIL import Image, ImageDraw, ImageFont, ImageOps

#: Colours a prompt can name; the edit tints the picture with the first one it mentions.
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 190),
    "orange": (240, 140, 30),
    "pink": (240, 120, 180),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
    "teal": (30, 150, 150),
}
#: Pillow format names and MIME types by the API's output_format values (both models).
FORMATS = {
    "png": ("PNG", "image/png", "png"),
    "jpg": ("JPEG", "image/jpeg", "jpg"),
    "jpeg": ("JPEG", "image/jpeg", "jpg"),
    "webp": ("WEBP", "image/webp", "webp"),
}
ACCEPTED_INPUTS = {"JPEG", "PNG", "GIF", "WEBP"}
_MAX_SIDE = 512


def _canvas(background: tuple[int, int, int]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (384, 384), background)
    return img, ImageDraw.Draw(img)


def _shoe() -> Image.Image:
    img, d = _canvas((236, 232, 226))
    d.polygon(
        [(60, 250), (90, 170), (190, 160), (260, 210), (330, 225), (335, 270), (60, 275)], fill=(70, 90, 160)
    )
    d.rectangle([55, 270, 340, 292], fill=(250, 250, 250))
    for x in range(120, 200, 18):
        d.line([(x, 178), (x + 10, 200)], fill=(240, 240, 240), width=4)
    return img


def _mug() -> Image.Image:
    img, d = _canvas((228, 236, 240))
    d.rounded_rectangle([110, 110, 250, 300], radius=14, fill=(200, 80, 60))
    d.ellipse([230, 150, 310, 250], outline=(200, 80, 60), width=16)
    d.ellipse([110, 98, 250, 124], fill=(150, 60, 45))
    return img


def _tshirt() -> Image.Image:
    img, d = _canvas((240, 238, 230))
    d.polygon(
        [
            (130, 80),
            (170, 95),
            (214, 95),
            (254, 80),
            (320, 130),
            (290, 170),
            (262, 150),
            (262, 310),
            (122, 310),
            (122, 150),
            (94, 170),
            (64, 130),
        ],
        fill=(60, 140, 110),
    )
    d.ellipse([170, 80, 214, 110], fill=(240, 238, 230))
    return img


SAMPLES = {"shoe.png": _shoe, "mug.png": _mug, "tshirt.png": _tshirt}


@cache
def sample_image(name: str) -> bytes:
    """PNG bytes of a generated sample product picture."""
    buf = io.BytesIO()
    SAMPLES[name]().save(buf, "PNG")
    return buf.getvalue()


def check_input(data: bytes) -> Image.Image:
    """Open an input image; raise ValueError unless it is jpeg, png, gif or webp."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as err:  # Pillow raises many types for undecodable data
        raise ValueError("input is not a decodable image") from err
    if img.format not in ACCEPTED_INPUTS:
        raise ValueError(f"input format {img.format} is not jpeg, png, gif or webp")
    return img


def _tint(prompt: str, seed: int, index: int) -> tuple[int, int, int]:
    lowered = prompt.lower()
    for name, rgb in COLOURS.items():
        if name in lowered:
            base = rgb
            break
    else:
        digest = hashlib.sha256(f"{prompt}|{seed}".encode()).digest()
        base = (digest[0], digest[1], digest[2])
    # Each extra image of one request gets a slightly shifted tint, so they differ visibly.
    return tuple((c + 37 * index) % 256 for c in base)  # type: ignore[return-value]


def _fit_ratio(img: Image.Image, ratio: str | None) -> Image.Image:
    if ratio and ratio != "match_input_image":
        w, h = (int(p) for p in ratio.split(":"))
        side = min(img.width, img.height, _MAX_SIDE)
        size = (side, round(side * h / w)) if w >= h else (round(side * w / h), side)
        return ImageOps.fit(img, size)
    img.thumbnail((_MAX_SIDE, _MAX_SIDE))
    return img


def render_edit(
    source: Image.Image,
    prompt: str,
    *,
    seed: int,
    index: int,
    output_format: str,
    quality: int,
    aspect_ratio: str | None,
) -> tuple[bytes, str]:
    """
    Apply a visible, deterministic edit: a tint named by the prompt and the prompt as a caption.

    :return: the encoded image and its MIME type.
    """
    img = _fit_ratio(source.convert("RGB"), aspect_ratio)
    overlay = Image.new("RGB", img.size, _tint(prompt, seed, index))
    img = Image.blend(img, overlay, 0.35)
    draw = ImageDraw.Draw(img)
    band = max(14, img.height // 12)
    draw.rectangle([0, img.height - band, img.width, img.height], fill=(0, 0, 0))
    draw.text((6, img.height - band + 2), prompt[:80], fill=(255, 255, 255), font=ImageFont.load_default())
    pillow_format, mime, _ = FORMATS[output_format]
    buf = io.BytesIO()
    options = {"quality": max(1, quality)} if pillow_format in ("JPEG", "WEBP") else {}
    img.save(buf, pillow_format, **options)
    return buf.getvalue(), mime
