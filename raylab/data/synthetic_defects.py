"""DRAEM-style synthetic defects: a Perlin-noise mask that blends foreign content into an image.

Corpora whose classes have no real defects (textures, natural materials) need anomalous
test images with pixel masks. The field's standard way to make them is DRAEM's (Zavrtanik
et al., ICCV 2021, Sec. 3.3):

1. a 2-D Perlin noise at a random lattice resolution ``2**a x 2**b`` (``a, b`` drawn from
   ``[0, 6)``), rotated by a random angle in [-90, 90] degrees and thresholded at 0.5,
   gives an irregular, blob-shaped mask ``M``;
2. an *anomaly source* ``A``: a foreign texture (DRAEM uses DTD images; here any pool of
   images that is not part of the corpus) or a distorted copy of the image itself, passed
   through three random colour / geometric augmentations;
3. the blend ``I' = I (1 - M) + (1 - beta) A M + beta I M``, ``beta ~ U(0, 0.8)``, so the
   defect ranges from opaque to half transparent.

``synthesize_defect`` returns the defective image and its binary mask. Masks whose area is
outside ``[min_area, max_area]`` of the image are redrawn (bounded attempts): DRAEM
trains on empty masks too, but a *test* defect must be visible and must not replace the
whole image. Everything is driven by a ``numpy.random.Generator``, so a seed reproduces
the same defect bit for bit.

Why the anomaly source must not come from the corpus: a method with one memory for all
classes (TailedCore, and its PatchCore / SoftPatch baselines) would find a pasted texture
of class B among class B's normal patches and call the defect normal. Foreign content is
drawn from outside the corpus (:func:`skimage_anomaly_sources` by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageOps
from scipy import ndimage


@dataclass(frozen=True)
class SyntheticDefectConfig:
    """DRAEM's defaults, plus the visibility bounds a test defect needs."""

    perlin_scale_exponents: tuple[int, int] = (0, 6)  # lattice 2**randint(0, 6) per axis
    threshold: float = 0.5
    rotate_mask: bool = True
    beta_range: tuple[float, float] = (0.0, 0.8)
    foreign_probability: float = 0.5  # foreign texture; otherwise a distorted self patch
    augmentations: int = 3
    min_area: float = 0.005
    max_area: float = 0.4
    max_attempts: int = 100


@dataclass(frozen=True)
class SyntheticDefect:
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8 in {0, 1}
    source: str  # "foreign" or "self"
    beta: float


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(shape: tuple[int, int], resolution: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Gradient (Perlin) noise on ``shape`` with a ``resolution`` lattice of random unit gradients.

    Values lie roughly in [-1, 1] (scaled by sqrt(2) as in DRAEM's generator); unlike the
    common tiling implementation, ``shape`` need not be a multiple of ``resolution``.
    """
    height, width = shape
    res_y, res_x = resolution
    if min(height, width) < 1 or min(res_y, res_x) < 1:
        raise ValueError(f"perlin noise needs a positive shape and resolution, got {shape} and {resolution}")
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(res_y + 1, res_x + 1))
    gradients = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    ys = np.arange(height) * (res_y / height)
    xs = np.arange(width) * (res_x / width)
    cell_y, cell_x = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = (ys - cell_y)[:, None], (xs - cell_x)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = gradients[(cell_y + dy)[:, None], (cell_x + dx)[None, :]]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    ty, tx = _fade(fy), _fade(fx)
    top = corner(0, 0) * (1 - tx) + corner(0, 1) * tx
    bottom = corner(1, 0) * (1 - tx) + corner(1, 1) * tx
    return np.sqrt(2.0) * (top * (1 - ty) + bottom * ty)


def perlin_mask(shape: tuple[int, int], rng: np.random.Generator, config: SyntheticDefectConfig) -> np.ndarray:
    """One DRAEM mask: Perlin noise at a random scale, randomly rotated, thresholded."""
    low, high = config.perlin_scale_exponents
    resolution = (2 ** int(rng.integers(low, high)), 2 ** int(rng.integers(low, high)))
    resolution = (min(resolution[0], shape[0]), min(resolution[1], shape[1]))
    noise = perlin_noise(shape, resolution, rng)
    if config.rotate_mask:
        noise = ndimage.rotate(noise, float(rng.uniform(-90.0, 90.0)), reshape=False, order=1, mode="reflect")
    return (noise > config.threshold).astype(np.uint8)


def _augment(image: Image.Image, rng: np.random.Generator, count: int) -> Image.Image:
    """``count`` distinct random ops from DRAEM's augmentation list (imgaug names in comments)."""

    def gamma(im):  # GammaContrast((0.5, 2.0))
        g = rng.uniform(0.5, 2.0)
        table = [min(255, int(round(255 * (i / 255) ** g))) for i in range(256)] * len(im.getbands())
        return im.point(table)

    def brightness(im):  # MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30))
        arr = np.asarray(im, np.float32) * rng.uniform(0.8, 1.2) + rng.uniform(-30, 30)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))

    def sharpness(im):  # pillike.EnhanceSharpness()
        return ImageEnhance.Sharpness(im).enhance(rng.uniform(0.0, 2.0))

    def hue_saturation(im):  # AddToHueAndSaturation((-50, 50))
        hsv = np.asarray(im.convert("HSV"), np.int16)
        hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-50, 51))) % 256
        hsv[..., 1] = np.clip(hsv[..., 1] + int(rng.integers(-50, 51)), 0, 255)
        return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")

    def solarize(im):  # Solarize(0.5, threshold=(32, 128))
        return ImageOps.solarize(im, int(rng.integers(32, 129)))

    def posterize(im):  # Posterize()
        return ImageOps.posterize(im, int(rng.integers(2, 6)))

    def invert(im):  # Invert()
        return ImageOps.invert(im)

    def autocontrast(im):  # pillike.Autocontrast()
        return ImageOps.autocontrast(im)

    def equalize(im):  # pillike.Equalize()
        return ImageOps.equalize(im)

    def rotate(im):  # Affine(rotate=(-45, 45))
        return im.rotate(float(rng.uniform(-45, 45)), resample=Image.BILINEAR)

    ops = [gamma, brightness, sharpness, hue_saturation, solarize, posterize, invert, autocontrast, equalize, rotate]
    for index in rng.choice(len(ops), size=count, replace=False):
        image = ops[int(index)](image)
    return image


def _random_crop_resized(source: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A random square crop (half to all of the shorter side) resized to ``size``, as RGB."""
    picture = Image.fromarray(source).convert("RGB")
    side = min(picture.size)
    crop = int(rng.integers(max(1, side // 2), side + 1))
    left = int(rng.integers(0, picture.size[0] - crop + 1))
    top = int(rng.integers(0, picture.size[1] - crop + 1))
    return picture.crop((left, top, left + crop, top + crop)).resize((size[1], size[0]), Image.BILINEAR)


def _distorted_self(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """The image itself, shifted by a random offset and rotated: a misplaced copy of its own structure."""
    height, width = image.shape[:2]
    shifted = np.roll(
        image,
        (int(rng.integers(height // 4, 3 * height // 4 + 1)), int(rng.integers(width // 4, 3 * width // 4 + 1))),
        axis=(0, 1),
    )
    return (
        Image.fromarray(shifted)
        .rotate(float(rng.choice([90, 180, 270])), resample=Image.BILINEAR)
        .resize((width, height))
    )


def synthesize_defect(
    image: np.ndarray,
    rng: np.random.Generator,
    foreign_sources: Sequence[np.ndarray] = (),
    config: SyntheticDefectConfig = SyntheticDefectConfig(),
    *,
    sample: str = "?",
) -> SyntheticDefect:
    """Blend one DRAEM-style defect into ``image`` ((H, W) or (H, W, 3) uint8).

    With no ``foreign_sources`` every defect is a distorted self patch.
    """
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or min(pixels.shape[:2]) < 8:
        raise ValueError(
            f"{sample}: synthetic defects need an (H, W[, 3]) uint8 image of at least 8 px, "
            f"got {pixels.shape} {pixels.dtype}"
        )
    rgb = np.asarray(Image.fromarray(pixels).convert("RGB"))
    shape = rgb.shape[:2]
    area = shape[0] * shape[1]
    for _ in range(config.max_attempts):
        mask = perlin_mask(shape, rng, config)
        if config.min_area * area <= int(mask.sum()) <= config.max_area * area:
            break
    else:
        raise RuntimeError(
            f"{sample}: no Perlin mask with area in [{config.min_area}, {config.max_area}] of the image "
            f"after {config.max_attempts} draws; widen the bounds or lower the threshold"
        )
    use_foreign = len(foreign_sources) > 0 and rng.uniform() < config.foreign_probability
    if use_foreign:
        source = _random_crop_resized(foreign_sources[int(rng.integers(len(foreign_sources)))], shape, rng)
    else:
        source = _distorted_self(rgb, rng)
    anomaly = np.asarray(_augment(source, rng, config.augmentations), np.float32)
    beta = float(rng.uniform(*config.beta_range))
    m = mask[..., None].astype(np.float32)
    base = rgb.astype(np.float32)
    blended = base * (1 - m) + (1 - beta) * anomaly * m + beta * base * m
    return SyntheticDefect(
        np.clip(np.rint(blended), 0, 255).astype(np.uint8), mask, "foreign" if use_foreign else "self", beta
    )


# Bundled with scikit-image (no download): photographs and textures that are in no raylab
# anomaly corpus, so pasted content is foreign to every class's memory.
SKIMAGE_SOURCES = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "rocket",
    "text",
    "clock",
    "colorwheel",
)


def skimage_anomaly_sources(names: Sequence[str] = SKIMAGE_SOURCES) -> list[np.ndarray]:
    """Foreign-texture pool for :func:`synthesize_defect`: scikit-image's bundled images as uint8."""
    try:
        import skimage.data
    except ImportError as error:
        raise ImportError("the synthetic-defect texture pool needs scikit-image: pip install 'raylab[data]'") from error
    pool = []
    for name in names:
        array = np.asarray(getattr(skimage.data, name)())
        if array.dtype != np.uint8:
            raise ValueError(f"skimage.data.{name}() is {array.dtype}, expected uint8")
        pool.append(array[..., :3] if array.ndim == 3 else array)
    return pool
