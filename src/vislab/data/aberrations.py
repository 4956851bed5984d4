"""Synthetic lens aberrations: vignetting, lateral chromatic aberration, radial distortion.

Crop detection reads lens traces that are centred on the ORIGINAL frame. These functions
add such traces on purpose, for two uses: the synthetic lens photos of the tests
(`vislab.testing.lens`), and the stress evaluation, where an uncropped photo gets an extra
aberration before it is cropped, to see which cue a trained detector leans on (the paper's
analysis). All take and return uint8 HxWx3 arrays and work in coordinates normalised by the
half diagonal, so r = 1 at the corners whatever the image size.
"""

from __future__ import annotations

import numpy as np

from vislab.config_crops import Aberrations  # noqa: F401  (the profile lives in config_crops.py: config validation imports it)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Pixel-centre coordinates relative to the image centre in units of the half diagonal,
    and the half diagonal in pixels."""
    half_diag = float(np.hypot(w, h)) / 2
    ys = (np.arange(h, dtype=np.float32) + 0.5 - h / 2) / half_diag
    xs = (np.arange(w, dtype=np.float32) + 0.5 - w / 2) / half_diag
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return xx, yy, half_diag


def _remap(image: np.ndarray, scales: list[np.ndarray | float]) -> np.ndarray:
    """Each output pixel of channel c samples the input (bilinear) at its position from the
    centre times scales[c]: a scale below 1 magnifies that channel."""
    from scipy.ndimage import map_coordinates

    h, w = image.shape[:2]
    xx, yy, half_diag = _grid(h, w)
    out = np.empty_like(image)
    for c, scale in enumerate(scales):
        if np.isscalar(scale) and scale == 1:
            out[..., c] = image[..., c]
            continue
        rows = yy * scale * half_diag + h / 2 - 0.5
        cols = xx * scale * half_diag + w / 2 - 0.5
        plane = map_coordinates(image[..., c].astype(np.float32), [rows, cols], order=1, mode="nearest")
        out[..., c] = np.clip(plane + 0.5, 0, 255).astype(np.uint8)
    return out


def vignette(image: np.ndarray, strength: float) -> np.ndarray:
    """Darken towards the corners: gain 1 - strength * r^2 (r = 1 at the corners)."""
    h, w = image.shape[:2]
    xx, yy, _ = _grid(h, w)
    gain = (1.0 - strength * (xx**2 + yy**2))[..., None]
    return np.clip(image.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)


def chromatic_aberration(image: np.ndarray, red: float, blue: float) -> np.ndarray:
    """Magnify the red and blue channels about the centre by `red` and `blue` percent, as a
    lens with lateral chromatic aberration does: fringes grow linearly with the radius."""
    return _remap(image, [1 / (1 + red / 100), 1.0, 1 / (1 + blue / 100)])


def radial_distortion(image: np.ndarray, k1: float) -> np.ndarray:
    """Barrel (k1 > 0) or pincushion (k1 < 0) distortion, src = dst * (1 + k1 r^2)."""
    h, w = image.shape[:2]
    xx, yy, _ = _grid(h, w)
    scale = 1 + k1 * (xx**2 + yy**2)
    return _remap(image, [scale, scale, scale])


def apply_aberrations(image: np.ndarray, lens: Aberrations) -> np.ndarray:
    """The profile's effects in the order a camera makes them: optics (distortion, fringes),
    then light fall-off."""
    out = np.asarray(image)
    if lens.distortion:
        out = radial_distortion(out, lens.distortion)
    if lens.red or lens.blue:
        out = chromatic_aberration(out, lens.red, lens.blue)
    if lens.vignette:
        out = vignette(out, lens.vignette)
    return out
