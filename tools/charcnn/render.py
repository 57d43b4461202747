"""Synthetic 24x24 character crops for the 36-class classifier (0-9, A-Z, case-insensitive).

    x, y = render(10000, seed=0, fonts=TRAIN_FONTS)   # x: N x 1 x 24 x 24 float32 in [0, 1]

Each sample is one character drawn with a font that ships in matplotlib (mpl-data/fonts/ttf),
nothing downloaded: a random class, upper or lower case for letters (the class is the letter),
random stroke thickening, aspect, shear, rotation, scale and position, sometimes parts of
neighbouring characters at the left/right edge, a Gaussian blur, a background with a gradient
and low-frequency texture, Gaussian noise, and at random either a dark character on a light
background or the reverse. The glyph is drawn with PIL (FreeType) at about 2.5x the final size
and resampled with supersampling; compositing runs vectorized over the batch in numpy.

The same (n, seed, fonts) gives the same arrays on the same PIL/FreeType build. TEST_FONTS are
held out of TRAIN_FONTS: the test split measures generalization to unseen typefaces.
"""
from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

CLASSES = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SIZE = 24

# Text fonts in matplotlib's mpl-data/fonts/ttf with glyphs for 0-9, A-Z, a-z. Left out: the
# Display cuts and STIXNonUni/STIXSiz* (no ASCII glyphs), LastResort (one placeholder glyph),
# cmsy10/cmex10/cmmi10 (TeX symbol and math fonts: their ASCII slots hold other symbols).
TRAIN_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmti10.ttf", "cmtt10.ttf",
)
TEST_FONTS = (
    "DejaVuSans-BoldOblique.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "STIXGeneralBol.ttf", "cmss10.ttf",
)

_GLYPH_PX = 40  # font size of the drawing canvas; the crop's character is about 9-21 px high
_CANVAS = (160, 96)  # width, height: room for a neighbouring character on each side
_SS = 2  # supersampling factor of the final resample


def font_dir() -> str:
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


@lru_cache(maxsize=None)
def _font(name: str):
    from PIL import ImageFont

    path = os.path.join(font_dir(), name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: font missing from this matplotlib install; pass other fonts")
    return ImageFont.truetype(path, _GLYPH_PX)


def render(n: int, seed: int, fonts: tuple[str, ...] = TRAIN_FONTS) -> tuple[np.ndarray, np.ndarray]:
    """``n`` crops: x float32 (n, 1, 24, 24) in [0, 1], y int64 (n,) indices into CLASSES."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), n)
    # Everything random is drawn up front, vectorized, so a sample depends only on (seed, index).
    p = {
        "font": rng.integers(0, len(fonts), n),
        "lower": rng.random(n) < 0.5,
        "stroke": rng.choice([0, 0, 0, 1, 2], n),
        "height": rng.uniform(9.0, 21.0, n),  # ink height in output pixels
        "aspect": np.exp(rng.normal(0.0, 0.12, n)),
        "shear": rng.normal(0.0, 0.12, n),
        "angle": np.clip(rng.normal(0.0, 6.0, n), -18, 18) * np.pi / 180,
        "dx": rng.normal(0.0, 1.2, n), "dy": rng.normal(0.0, 1.2, n),
        "neighbours": rng.random((n, 2)) < 0.35,  # left, right
        "neighbour_cls": rng.integers(0, len(CLASSES), (n, 2)),
        "gap": rng.uniform(0.5, 5.0, (n, 2)),  # canvas pixels between ink boxes
    }
    masks = np.empty((n, SIZE, SIZE), np.float32)
    for i in range(n):
        masks[i] = _glyph(CLASSES[y[i]], fonts[p["font"][i]], p, i)
    x = _composite(masks, rng)
    return x[:, None], y.astype(np.int64)


def _char(c: str, lower: bool) -> str:
    return c.lower() if lower and c.isalpha() else c


def _glyph(c: str, font_name: str, p: dict, i: int) -> np.ndarray:
    """Coverage mask (24 x 24, 0..1) of one character after the random geometric transform."""
    from PIL import Image, ImageDraw

    font = _font(font_name)
    stroke = int(p["stroke"][i])
    text = _char(c, p["lower"][i])
    canvas = Image.new("L", _CANVAS, 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = _CANVAS[0] / 2, _CANVAS[1] * 0.6
    draw.text((cx, cy), text, font=font, fill=255, anchor="ms", stroke_width=stroke, stroke_fill=255)
    box = draw.textbbox((cx, cy), text, font=font, anchor="ms", stroke_width=stroke)
    if box[2] <= box[0] or box[3] <= box[1]:  # no ink: should not happen with TRAIN/TEST fonts
        raise ValueError(f"font {font_name} draws nothing for {text!r}")
    for side, sign in ((0, -1), (1, 1)):
        if p["neighbours"][i, side]:
            other = _char(CLASSES[p["neighbour_cls"][i, side]], p["lower"][i])
            w = draw.textbbox((0, cy), other, font=font, anchor="ms", stroke_width=stroke)
            width = w[2] - w[0]
            edge = box[0] - p["gap"][i, side] - width if sign < 0 else box[2] + p["gap"][i, side]
            draw.text((edge - w[0], cy), other, font=font, fill=255, anchor="ms",
                      stroke_width=stroke, stroke_fill=255)
    ink_w, ink_h = box[2] - box[0], box[3] - box[1]
    center = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    # output -> canvas scale: the ink box should be `height` px high (at most 22 px wide)
    scale = max(ink_h / p["height"][i], ink_w * p["aspect"][i] / 22.0)
    sx, sy = scale * p["aspect"][i], scale
    a, sh = p["angle"][i], p["shear"][i]
    cos, sin = np.cos(a), np.sin(a)
    # canvas = center + R(a) @ [[sx, sh*sx], [0, sy]] @ (out - out_center - d), out in output px
    m = np.array([[cos, -sin], [sin, cos]]) @ np.array([[sx, sh * sx], [0.0, sy]])
    m = m / _SS  # the transform samples a _SS-times larger image
    oc = np.array([SIZE * _SS / 2 + p["dx"][i] * _SS, SIZE * _SS / 2 + p["dy"][i] * _SS])
    off = np.array(center) - m @ oc
    data = (m[0, 0], m[0, 1], off[0], m[1, 0], m[1, 1], off[1])
    big = canvas.transform((SIZE * _SS, SIZE * _SS), Image.Transform.AFFINE, data,
                           resample=Image.Resampling.BILINEAR)
    return np.asarray(big.reduce(_SS), np.float32) / 255.0


def _composite(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur the masks and paint them over random backgrounds; random polarity; noise."""
    n = len(masks)
    sigma = rng.uniform(0.0, 1.1, n)
    masks = _blur(masks, sigma)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / (SIZE - 1) - 0.5
    bg = rng.uniform(0.45, 1.0, n)[:, None, None]
    contrast = rng.uniform(0.25, 0.9, n)[:, None, None]
    fg = np.clip(bg - contrast, 0.0, None)
    theta = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    gradient = rng.uniform(0.0, 0.25, n)[:, None, None] * (np.cos(theta) * xx + np.sin(theta) * yy)
    coarse = rng.normal(0.0, 1.0, (n, 4, 4)).astype(np.float32)
    texture = rng.uniform(0.0, 0.08, n)[:, None, None] * _upsample(coarse)
    img = (bg + gradient + texture) * (1.0 - masks) + (fg + 0.5 * gradient) * masks
    img = img + rng.normal(0.0, 1.0, img.shape) * rng.uniform(0.0, 0.06, n)[:, None, None]
    invert = (rng.random(n) < 0.5)[:, None, None]
    img = np.where(invert, 1.0 - img, img)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _blur(masks: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Separable Gaussian blur with a per-sample sigma (sigma < 0.2: unchanged)."""
    taps = np.arange(-3, 4, dtype=np.float32)
    s = np.maximum(sigma, 0.2)[:, None]
    k = np.exp(-0.5 * (taps[None] / s) ** 2)
    k = (k / k.sum(1, keepdims=True)).astype(np.float32)  # n x 7
    padded = np.pad(masks, ((0, 0), (3, 3), (3, 3)))
    rows = sum(k[:, j, None, None] * padded[:, j:j + SIZE, :] for j in range(7))
    return sum(k[:, j, None, None] * rows[:, :, j:j + SIZE] for j in range(7))


def _upsample(coarse: np.ndarray) -> np.ndarray:
    """Bilinear 4x4 -> 24x24 (align corners) for a smooth texture."""
    g = np.linspace(0, coarse.shape[-1] - 1, SIZE)
    i0 = np.clip(np.floor(g).astype(int), 0, coarse.shape[-1] - 2)
    f = (g - i0).astype(np.float32)
    rows = coarse[:, i0, :] * (1 - f)[None, :, None] + coarse[:, i0 + 1, :] * f[None, :, None]
    return rows[:, :, i0] * (1 - f) + rows[:, :, i0 + 1] * f


def contact_sheet(x: np.ndarray, y: np.ndarray, path: str, cols: int = 16) -> None:
    """Save a grid of samples with their labels (for eyeballing the renderer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(x) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.7, rows * 0.8))
    for ax, img, label in zip(axes.ravel(), x, y):
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
        ax.set_title(CLASSES[label], fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
