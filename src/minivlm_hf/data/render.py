"""Drawing of one synthetic scene: a textured background and 1-8 coloured shapes with exact ground truth.

Everything random comes from the ``numpy.random.Generator`` passed in; PIL only rasterises, so the same
generator state gives the same pixels (and the same PNG bytes, see :func:`encode_png`).

Geometry conventions (documented for the consumers of the boxes):

- each shape is drawn inside a square of side ``s`` pixels, ``s`` drawn from the size's range
  (:data:`~minivlm_hf.data.vocab.SIZE_RANGES`, a fraction of the image's shorter side), with a small
  rotation jitter (at most 12 degrees, so a square never turns into a diamond);
- the box of an object is the tight box of the **full (amodal) shape**, in absolute pixels, COCO style
  ``[x, y, w, h]`` (``w = x_max - x_min + 1`` over the covered pixels); every shape lies entirely inside the
  image;
- ``area`` is the number of pixels of the full shape;
- objects are drawn back to front; a new object is only accepted if every earlier object keeps at least
  :data:`MIN_VISIBLE_FRACTION` of its pixels visible, and two objects of the same colour never overlap
  (their boxes keep a 2-pixel gap), so occlusion never hides or merges objects.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .vocab import COLOR_RGB, COLORS, MAX_OBJECTS, SHAPES, SIZE_RANGES, SIZES

MIN_VISIBLE_FRACTION = 0.6
SIZE_PROBABILITIES = (0.35, 0.40, 0.25)
BACKGROUNDS = ("gradient", "noise", "stripes", "checker")
MAX_ROTATION_DEGREES = 12.0
PLACEMENT_ATTEMPTS = 30
SAME_COLOR_GAP = 2
#: Pixel values before the fine noise stay in [PIXEL_MIN, PIXEL_MAX] so that adding the noise in uint8
#: never wraps around.
NOISE_LEVELS = 8
PIXEL_MIN, PIXEL_MAX = NOISE_LEVELS // 2, 255 - NOISE_LEVELS // 2


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: class/attribute indices and its geometry (absolute pixels)."""

    shape: int  # index into SHAPES (= category id)
    color: int  # index into COLORS
    size: int  # index into SIZES
    bbox: tuple[float, float, float, float]  # x, y, w, h of the full shape
    area: int  # pixels of the full shape
    visible_fraction: float  # fraction of its pixels not covered by objects drawn later

    @property
    def shape_name(self) -> str:
        return SHAPES[self.shape]

    @property
    def color_name(self) -> str:
        return COLORS[self.color]

    @property
    def size_name(self) -> str:
        return SIZES[self.size]

    @property
    def x2(self) -> float:
        return self.bbox[0] + self.bbox[2]

    @property
    def y2(self) -> float:
        return self.bbox[1] + self.bbox[3]


def _star(points: int = 5, outer: float = 0.5, inner: float = 0.21) -> np.ndarray:
    angles = -math.pi / 2 + np.arange(2 * points) * math.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _heart(n: int = 40) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(0) + pts.min(0)) / 2
    return pts / (pts.max(0) - pts.min(0)).max()


def _cross(arm: float = 0.17) -> np.ndarray:
    a, b = arm, 0.5
    return np.array(
        [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]
    )


#: Unit outlines (centred at 0, extent at most 1) of the polygonal shapes; circle and ring are ellipses.
_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([(-0.45, -0.45), (0.45, -0.45), (0.45, 0.45), (-0.45, 0.45)]),
    "triangle": np.array([(0.0, -0.47), (0.5, 0.4), (-0.5, 0.4)]),
    "star": _star(),
    "heart": _heart(),
    "cross": _cross(),
    "diamond": np.array([(0.0, -0.5), (0.36, 0.0), (0.0, 0.5), (-0.36, 0.0)]),
}
_RING_INNER = 0.58  # inner radius / outer radius


def _shape_mask(shape: str, side: float, angle: float) -> np.ndarray:
    """Rasterise a shape of the given side (rotated by ``angle`` radians, circles and rings excepted):
    the boolean mask of its pixels, cropped to the covered pixels."""
    if shape in ("circle", "ring"):
        r = side / 2
        pts = np.array([(-r, -r), (r, r)])
    else:
        c, s = math.cos(angle), math.sin(angle)
        pts = _POLYGONS[shape] * side @ np.array([[c, s], [-s, c]])
    x0, y0 = math.floor(pts[:, 0].min()) - 1, math.floor(pts[:, 1].min()) - 1
    w, h = math.ceil(pts[:, 0].max()) + 2 - x0, math.ceil(pts[:, 1].max()) + 2 - y0
    patch = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(patch)
    local = pts - (x0, y0)
    if shape in ("circle", "ring"):
        draw.ellipse([tuple(local[0]), tuple(local[1])], fill=255)
        if shape == "ring":
            r_in = side / 2 * _RING_INNER
            cx, cy = local.mean(0)
            draw.ellipse([(cx - r_in, cy - r_in), (cx + r_in, cy + r_in)], fill=0)
    else:
        draw.polygon([tuple(p) for p in local], fill=255)
    mask = np.asarray(patch) > 0
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _muted_color(rng: np.random.Generator) -> np.ndarray:
    """A desaturated mid-tone background colour, far from the saturated/white/black object colours."""
    return rng.uniform(85, 175) + rng.uniform(-25, 25, size=3)


def _background(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, str]:
    """A uint8 [H, W, 3] background of one of :data:`BACKGROUNDS`.

    Each kind is an index map in 0..255 looked up in a 256-entry palette running between two muted
    colours (a cheap way to texture without per-pixel float work)."""
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    a, b = _muted_color(rng), _muted_color(rng)
    palette = a + np.linspace(0.0, 1.0, 256)[:, None] * (b - a)
    palette = np.clip(np.rint(palette), PIXEL_MIN, PIXEL_MAX).astype(np.uint8)
    xs = np.arange(width, dtype=np.int32)[None, :]
    ys = np.arange(height, dtype=np.int32)[:, None]
    if kind == "gradient":
        theta = rng.uniform(0, 2 * math.pi)
        gx = xs * np.float32(math.cos(theta))
        gy = ys * np.float32(math.sin(theta))
        gx -= gx.min()
        gy -= gy.min()
        scale = np.float32(255.0 / max(float(gx.max() + gy.max()), 1.0))
        index = ((gx * scale) + (gy * scale)).astype(np.uint8)
    elif kind == "noise":
        # Low-frequency blotches: a coarse random grid upsampled bilinearly.
        gh, gw = max(2, height // 24), max(2, width // 24)
        coarse = rng.integers(0, 256, size=(gh, gw), dtype=np.uint8)
        index = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
    elif kind == "stripes":
        period = int(rng.integers(8, 25))
        direction = int(rng.integers(4))  # vertical, horizontal, and the two diagonals
        coord = (xs, ys, xs + ys, xs - ys + height)[direction]
        index = np.broadcast_to(((coord // period) % 2).astype(np.uint8) * np.uint8(255), (height, width))
    else:  # checker
        cell = int(rng.integers(10, 29))
        index = (((xs // cell) + (ys // cell)) % 2).astype(np.uint8) * np.uint8(255)
    return np.take(palette, index, axis=0), kind


def render_scene(
    rng: np.random.Generator,
    width: int,
    height: int,
    num_objects: int,
) -> tuple[Image.Image, list[SceneObject], str]:
    """Draw a scene with up to ``num_objects`` objects (fewer only when placement repeatedly fails).

    Returns the RGB image, the objects in drawing order (back to front) and the background kind."""
    if not 1 <= num_objects <= MAX_OBJECTS:
        raise ValueError(f"num_objects must be in 1..{MAX_OBJECTS}, got {num_objects}")
    background, kind = _background(rng, width, height)
    canvas = Image.fromarray(background, "RGB")
    labels = np.full((height, width), -1, dtype=np.int8)  # index of the top object at each pixel
    placed: list[dict] = []
    short = min(width, height)
    for _ in range(num_objects):
        shape = int(rng.integers(len(SHAPES)))
        color = int(rng.integers(len(COLORS)))
        size = int(rng.choice(len(SIZES), p=SIZE_PROBABILITIES))
        lo, hi = SIZE_RANGES[SIZES[size]]
        side = float(rng.uniform(lo, hi)) * short
        angle = math.radians(float(rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES)))
        mask = _shape_mask(SHAPES[shape], side, angle)
        mh, mw = mask.shape
        if mw >= width - 2 or mh >= height - 2:
            continue
        area = int(mask.sum())
        for _attempt in range(PLACEMENT_ATTEMPTS):
            x = int(rng.integers(1, width - mw))
            y = int(rng.integers(1, height - mh))
            if _accept(placed, labels, mask, x, y, color):
                break
        else:
            continue
        region = labels[y : y + mh, x : x + mw]
        for other in placed:
            other["visible"] -= int(np.count_nonzero((region == other["index"]) & mask))
        region[mask] = len(placed)
        placed.append(
            {"index": len(placed), "shape": shape, "color": color, "size": size, "box": (x, y, mw, mh),
             "area": area, "visible": area}
        )
        jitter = rng.integers(-12, 13, size=3)
        rgb = tuple(int(v) for v in np.clip(np.array(COLOR_RGB[COLORS[color]]) + jitter, PIXEL_MIN, PIXEL_MAX))
        canvas.paste(rgb, (x, y, x + mw, y + mh), Image.fromarray(mask.astype(np.uint8) * 255, "L"))
    # Fine sensor-like noise in [-NOISE_LEVELS/2, NOISE_LEVELS/2), added in uint8 without wrapping.
    pixels = np.array(canvas, dtype=np.uint8)
    noise = np.frombuffer(rng.bytes(pixels.size), dtype=np.uint8).reshape(pixels.shape)
    pixels += noise & np.uint8(NOISE_LEVELS - 1)
    pixels -= np.uint8(NOISE_LEVELS // 2)
    image = Image.fromarray(pixels, "RGB")
    objects = [
        SceneObject(
            shape=p["shape"], color=p["color"], size=p["size"], bbox=tuple(float(v) for v in p["box"]),
            area=p["area"], visible_fraction=p["visible"] / p["area"],
        )
        for p in placed
    ]
    return image, objects, kind


def _accept(placed: list[dict], labels: np.ndarray, mask: np.ndarray, x: int, y: int, color: int) -> bool:
    """Whether a new object at (x, y) keeps every earlier object visible enough and apart from its colour."""
    mh, mw = mask.shape
    region = labels[y : y + mh, x : x + mw]
    for other in placed:
        ox, oy, ow, oh = other["box"]
        gap = SAME_COLOR_GAP if other["color"] == color else 0
        if x >= ox + ow + gap or ox >= x + mw + gap or y >= oy + oh + gap or oy >= y + mh + gap:
            continue
        if other["color"] == color:
            return False
        hidden = int(np.count_nonzero((region == other["index"]) & mask))
        if other["visible"] - hidden < MIN_VISIBLE_FRACTION * other["area"]:
            return False
    return True


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of an 8-bit RGB image, written directly from the PNG specification.

    Every scanline uses the "Sub" filter and the stream is deflated Huffman-only (no match search), which
    is several times faster than a general-purpose encoder on noisy images at a similar size. The output
    depends only on the pixels (no timestamps or text chunks), so equal pixels give equal bytes."""
    pixels = np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.uint8)
    height, width, _ = pixels.shape
    rows = pixels.reshape(height, width * 3)
    raw = np.empty((height, width * 3 + 1), dtype=np.uint8)
    raw[:, 0] = 1  # filter type Sub: each byte minus the byte of the previous pixel (mod 256)
    raw[:, 1:4] = rows[:, :3]
    np.subtract(rows[:, 3:], rows[:, :-3], out=raw[:, 4:])
    compressor = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    idat = compressor.compress(raw.tobytes()) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit truecolour, no interlace
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
