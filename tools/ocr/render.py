"""Synthetic text lines for the CRNN recognizer: 4-10 characters of 0-9 and A-Z, 32 x 128 grey.

    x, labels, centers = render_lines(1000, seed=0, fonts=TRAIN_FONTS)
    # x: uint8 (N, 1, 32, 128); labels: str; centers[i]: (len(labels[i]), 2) x and width in output px

Fonts are the character CNN's (tools/charcnn/render.py: the text fonts that ship in matplotlib,
nothing downloaded), with the same split: the test lines use TEST_FONTS, held out of
TRAIN_FONTS. Per line: a random string, font, stroke thickening, letter spacing (with jitter per
character), ink height (12-24 px), horizontal stretch, shear, slight rotation and position; a
string too wide for the line is squeezed horizontally. The glyphs are drawn with PIL (FreeType)
at a large size and resampled with supersampling, then blurred (random sigma) and composited
over a background with a gradient and low-frequency texture, with Gaussian noise and, at
random, light text on dark.

Besides the strings, each line's layout: every character's horizontal center and width in
output pixels (training can use them as per-column targets). Images are uint8 byte levels (the models take ``x / 255`` as float32). The same (n, seed, fonts,
size) gives the same arrays on the same PIL/FreeType build.
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from charcnn.render import TEST_FONTS, TRAIN_FONTS, font_dir

__all__ = ["CHARSET", "TEST_FONTS", "TRAIN_FONTS", "Lines", "render_lines", "to_float"]

CHARSET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MIN_LEN, MAX_LEN = 4, 10
_FONT_PX = 48  # drawing size on the canvas; the line's ink is 12-24 px high
_SS = 2  # supersampling factor of the final resample


@lru_cache(maxsize=None)
def _font(name: str):
    from PIL import ImageFont

    return ImageFont.truetype(os.path.join(font_dir(), name), _FONT_PX)  # the font list is charcnn's


def random_strings(n: int, rng: np.random.Generator, charset: str = CHARSET) -> list[str]:
    lengths = rng.integers(MIN_LEN, MAX_LEN + 1, n)
    return ["".join(charset[i] for i in rng.integers(0, len(charset), k)) for k in lengths]


class Lines(NamedTuple):
    x: np.ndarray  # uint8 (n, 1, height, width)
    texts: list[str]
    centers: list[np.ndarray]  # per line, float (len(text), 2): each character's center x and width, px


def render_lines(n: int, seed: int, fonts: tuple[str, ...] = TRAIN_FONTS, *, height: int = 32, width: int = 128,
                 texts: list[str] | None = None) -> Lines:
    """``n`` lines of ``texts`` (random strings if None), their images and character positions."""
    rng = np.random.default_rng(seed)
    texts = random_strings(n, rng) if texts is None else list(texts)
    if len(texts) != n:
        raise ValueError(f"texts has {len(texts)} strings but n={n}")
    # Everything random is drawn up front, so a line depends only on (seed, index).
    p = {
        "font": rng.integers(0, len(fonts), n),
        "stroke": rng.choice([0, 0, 0, 1, 2], n),
        "tracking": rng.uniform(-0.04, 0.3, n),  # extra space between characters, in font sizes
        "jitter": rng.normal(0.0, 0.03, (n, MAX_LEN + 1)),
        "ink_h": rng.uniform(12.0, 24.0, n) * height / 32,
        "stretch": np.exp(rng.normal(0.0, 0.12, n)),
        "shear": rng.normal(0.0, 0.12, n),
        "angle": np.clip(rng.normal(0.0, 1.5, n), -4, 4) * np.pi / 180,
        "x": rng.random(n), "dy": rng.normal(0.0, 1.2, n),
    }
    drawn = [_line_mask(texts[i], fonts[p["font"][i]], p, i, height, width) for i in range(n)]
    x = _composite(np.stack([mask for mask, _ in drawn]), rng)[:, None]
    return Lines(x, texts, [centers for _, centers in drawn])


def to_float(x: np.ndarray) -> np.ndarray:
    """uint8 byte levels -> float32 in [0, 1], the recognizer's input."""
    return x.astype(np.float32) / 255.0


def _line_mask(text: str, font_name: str, p: dict, i: int, height: int,
               width: int) -> tuple[np.ndarray, np.ndarray]:
    """Coverage (height x width, 0..1) of one string after the random layout and transform, and
    each character's center x and width in output pixels."""
    from PIL import Image, ImageDraw

    font = _font(font_name)
    stroke = int(p["stroke"][i])
    canvas = Image.new("L", (int(_FONT_PX * 1.6 * len(text)) + 4 * _FONT_PX, 2 * _FONT_PX), 0)
    draw = ImageDraw.Draw(canvas)
    cursor, baseline = 2.0 * _FONT_PX, 1.4 * _FONT_PX
    spans = []  # canvas x of each character's left edge and its advance width
    for k, c in enumerate(text):
        spans.append((cursor, font.getlength(c) + 2 * stroke))
        draw.text((cursor, baseline), c, font=font, fill=255, anchor="ls", stroke_width=stroke, stroke_fill=255)
        advance = font.getlength(c) + 2 * stroke + (p["tracking"][i] + p["jitter"][i, k]) * _FONT_PX
        cursor += max(advance, 0.55 * font.getlength(c))
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"font {font_name} draws nothing for {text!r}")
    ink_w, ink_h = box[2] - box[0], box[3] - box[1]
    sy = p["ink_h"][i] / ink_h  # canvas -> output scale
    sx = sy * p["stretch"][i]
    shear, angle = p["shear"][i], p["angle"][i]
    out_w = ink_w * sx + abs(shear) * p["ink_h"][i]
    if out_w > width - 2:  # too wide: squeeze horizontally
        sx *= (width - 2) / out_w
        out_w = width - 2
    cx = 1 + out_w / 2 + p["x"][i] * (width - 2 - out_w)
    room = max((height - p["ink_h"][i]) / 2 - 1.5, 0.0)
    cy = height / 2 + float(np.clip(p["dy"][i], -room, room))
    # output = o + R(angle) @ [[1, -shear], [0, 1]] @ diag(sx, sy) @ (canvas - center); PIL wants the inverse
    cos, sin = np.cos(angle), np.sin(angle)
    forward = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, -shear], [0.0, 1.0]]) @ np.diag([sx, sy])
    inverse = np.linalg.inv(forward) / _SS  # the transform samples a _SS-times larger image
    center = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    off = center - inverse @ (np.array([cx, cy]) * _SS)
    data = (inverse[0, 0], inverse[0, 1], off[0], inverse[1, 0], inverse[1, 1], off[1])
    big = canvas.transform((width * _SS, height * _SS), Image.Transform.AFFINE, data,
                           resample=Image.Resampling.BILINEAR)
    left, advance = np.array(spans).T
    centers = np.stack([cx + forward[0, 0] * (left + advance / 2 - center[0]), forward[0, 0] * advance], 1)
    return np.asarray(big.reduce(_SS), np.float32) / 255.0, centers


def _composite(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur each mask, paint it over a textured background, add noise and flip polarity at random."""
    from scipy.ndimage import gaussian_filter, zoom

    n, h, w = masks.shape
    sigma = rng.uniform(0.0, 1.2, n)
    masks = np.stack([gaussian_filter(m, s) if s > 0.25 else m for m, s in zip(masks, sigma)])
    bg = rng.uniform(0.5, 1.0, n)[:, None, None]
    fg = np.clip(bg - rng.uniform(0.3, 0.9, n)[:, None, None], 0.0, None)
    ramp = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, None, :] * rng.uniform(-0.3, 0.3, n)[:, None, None]
    coarse = rng.normal(0.0, 1.0, (n, 3, 9)).astype(np.float32)
    texture = zoom(coarse, (1, h / 3, w / 9), order=1) * rng.uniform(0.0, 0.08, n)[:, None, None]
    img = (bg + ramp + texture) * (1.0 - masks) + (fg + 0.5 * ramp) * masks
    img = img + rng.normal(0.0, 1.0, img.shape) * rng.uniform(0.0, 0.06, n)[:, None, None]
    img = np.where((rng.random(n) < 0.5)[:, None, None], 1.0 - img, img)
    return np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
