"""The embedded picture world: small RGB images of shapes, each with an English and a Chinese caption.

Deterministic from a seed. Every picture has a shape kind (circle, square, triangle, cross), a colour, a size
(small / large) and a position, drawn on a noisy dark background. Captions read "a photo of a small red circle" /
"一张小红色圆形的照片". Some colour-shape combinations never appear in training (`HELD_OUT_COMBOS`), so a model can
be tested on compositions it has not seen (notes 004 §CLIP, zero-shot).

Splits: "train" and "test" hold the seen combinations (different pictures), "heldout" only the held-out ones.
Images are uint8 arrays (N, H, W, 3); `to_tensor` maps them to floats (N, 3, H, W) in [-1, 1].
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from danlu.errors import DanluError

SHAPES = ["circle", "square", "triangle", "cross"]
SHAPES_ZH = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "cross": "十字形"}
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 200),
}
COLOURS_ZH = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色"}
SIZES = ["small", "large"]
SIZES_ZH = {"small": "小", "large": "大"}
# Each shape and each colour still appears in training with the other partners.
HELD_OUT_COMBOS = [("red", "triangle"), ("green", "cross"), ("blue", "circle"), ("yellow", "square")]


@dataclass
class Pictures:
    """One split of the picture world; index i describes images[i]."""

    images: np.ndarray  # (N, H, W, 3) uint8
    shape: np.ndarray  # (N,) index into SHAPES
    colour: np.ndarray  # (N,) index into list(COLOURS)
    size: np.ndarray  # (N,) index into SIZES
    captions_en: list[str]
    captions_zh: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray) -> Pictures:
        """The pictures at `index` (an int array or a boolean mask)."""
        idx = np.arange(len(self))[index]
        return Pictures(
            self.images[idx],
            self.shape[idx],
            self.colour[idx],
            self.size[idx],
            [self.captions_en[i] for i in idx],
            [self.captions_zh[i] for i in idx],
        )


def caption_en(size: str, colour: str, shape: str) -> str:
    return f"a photo of a {size} {colour} {shape}"


def caption_zh(size: str, colour: str, shape: str) -> str:
    return f"一张{SIZES_ZH[size]}{COLOURS_ZH[colour]}{SHAPES_ZH[shape]}的照片"


def shape_mask(kind: str, image_size: int, cx: float, cy: float, r: float) -> np.ndarray:
    """A boolean (H, W) mask of one shape of half-extent r centred at (cx, cy), sampled at pixel centres."""
    yy, xx = np.mgrid[0:image_size, 0:image_size] + 0.5  # (H, W) each
    dx, dy = xx - cx, yy - cy
    if kind == "circle":
        return dx**2 + dy**2 <= r**2
    if kind == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)  # same area order as the circle
    if kind == "triangle":  # apex up: the half-width grows linearly from 0 at the top to r at the base
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    if kind == "cross":
        arm = max(r / 3, 0.75)
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    raise DanluError(f"unknown shape {kind!r}; shapes: {', '.join(SHAPES)}")


def _draw(rng: random.Random, image_size: int, shape: str, colour: str, size: str) -> np.ndarray:
    s = image_size / 16  # the geometry below is written for 16x16 and scales with the picture
    r = rng.uniform(2.6, 3.4) * s if size == "small" else rng.uniform(5.0, 6.2) * s
    cx = rng.uniform(r + 0.5, image_size - r - 0.5)
    cy = rng.uniform(r + 0.5, image_size - r - 0.5)
    nrng = np.random.default_rng(rng.getrandbits(32))
    img = nrng.uniform(10, 45, size=(image_size, image_size, 3))  # noisy dark background
    rgb = np.clip(np.array(COLOURS[colour], dtype=float) + nrng.uniform(-20, 20, size=3), 0, 255)
    img[shape_mask(shape, image_size, cx, cy, r)] = rgb
    return img.astype(np.uint8)


def make_pictures(
    n: int,
    split: str = "train",
    seed: int = 0,
    image_size: int = 16,
    held_out: list[tuple[str, str]] | None = None,
) -> Pictures:
    """n pictures of `split` ("train" / "test": the seen colour-shape combinations; "heldout": only the held-out
    ones). The same (n, split, seed, image_size) always gives the same pictures; splits never share a seed."""
    if split not in ("train", "test", "heldout"):
        raise DanluError(f"unknown picture split {split!r}; use train, test or heldout")
    if image_size < 8:
        raise DanluError(f"image_size must be at least 8 pixels, got {image_size}")
    held = HELD_OUT_COMBOS if held_out is None else held_out
    combos = [(c, s) for c in COLOURS for s in SHAPES if ((c, s) in held) == (split == "heldout")]
    if not combos:
        raise DanluError(f"split {split!r} has no colour-shape combinations (held out: {held})")
    rng = random.Random(f"pictures/{seed}/{split}/{image_size}")
    colour_names = list(COLOURS)
    images, shapes, colours, sizes, en, zh = [], [], [], [], [], []
    for _ in range(n):
        colour, shape = rng.choice(combos)
        size = rng.choice(SIZES)
        images.append(_draw(rng, image_size, shape, colour, size))
        shapes.append(SHAPES.index(shape))
        colours.append(colour_names.index(colour))
        sizes.append(SIZES.index(size))
        en.append(caption_en(size, colour, shape))
        zh.append(caption_zh(size, colour, shape))
    empty = np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    return Pictures(
        np.stack(images) if images else empty,
        np.array(shapes, dtype=np.int64),
        np.array(colours, dtype=np.int64),
        np.array(sizes, dtype=np.int64),
        en,
        zh,
    )


def to_tensor(images: np.ndarray):
    """uint8 (N, H, W, 3) -> float32 torch tensor (N, 3, H, W) in [-1, 1]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    return x.permute(0, 3, 1, 2) / 127.5 - 1.0  # (N, 3, H, W)


def to_uint8(x) -> np.ndarray:
    """float tensor (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return x.permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3)


def save_grid(images: np.ndarray, path, ncol: int = 8, scale: int = 4) -> None:
    """Write uint8 images (N, H, W, 3) as one PNG grid, each picture enlarged `scale` times (Pillow)."""
    from PIL import Image

    N, H, W, _ = images.shape
    ncol = max(1, min(ncol, N))
    nrow = (N + ncol - 1) // ncol
    grid = np.full((nrow * (H + 1) + 1, ncol * (W + 1) + 1, 3), 255, dtype=np.uint8)
    for i in range(N):
        r, c = divmod(i, ncol)
        grid[1 + r * (H + 1) : 1 + r * (H + 1) + H, 1 + c * (W + 1) : 1 + c * (W + 1) + W] = images[i]
    img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    img.save(path)


def parse_prompt(prompt: str) -> tuple[int | None, int | None]:
    """The (shape, colour) indices named in an English or Chinese prompt ("a red circle", "红色圆形");
    None for an attribute the prompt leaves out."""
    text = prompt.lower()
    shape = next((i for i, s in enumerate(SHAPES) if s in text or SHAPES_ZH[s] in prompt), None)
    colour = next((i for i, c in enumerate(COLOURS) if c in text or COLOURS_ZH[c] in prompt), None)
    if shape is None and colour is None:
        raise DanluError(
            f"prompt {prompt!r} names no shape ({', '.join(SHAPES)}) and no colour ({', '.join(COLOURS)}); "
            'try "a red circle"'
        )
    return shape, colour
