"""Site effects: what a site's scanner makes of a site-free image (intensity map, bias
field, noise)."""

from __future__ import annotations

import numpy as np

from .head import INTENSITY, Anatomy


def intensity_map(x: np.ndarray, site: dict) -> np.ndarray:
    """A site's monotone intensity map, site-free intensities → scanner units (before bias).

    ``gamma``: x^a; ``exp``: (e^{a x} - 1) / (e^a - 1); ``log``: log(1 + a x) / log(1 + a);
    then ``gain * f + offset``. Strictly increasing for x >= 0.
    """
    x = np.maximum(np.asarray(x, dtype=np.float64), 0.0)
    kind, a = site["intensity"]["family"], site["intensity"]["parameter"]
    if kind == "gamma":
        f = x**a
    elif kind == "exp":
        f = np.expm1(a * x) / np.expm1(a)
    else:
        f = np.log1p(a * x) / np.log1p(a)
    return site["intensity"]["gain"] * f + site["intensity"]["offset"]


def bias_field(site: dict, axes: list[np.ndarray]) -> np.ndarray:
    """A site's smooth multiplicative bias: exp of a 2nd-order polynomial of world position."""
    x, y, z = (a / 100.0 for a in axes)
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
    log_field = sum(c * t for c, t in zip(site["bias"]["coefficients"], terms))
    return np.exp(log_field).astype(np.float32)


def scan_image(anatomy: Anatomy, site: dict, rng: np.random.Generator) -> np.ndarray:
    """Site-free image → what the site's scanner stores (int16, RAS grid).

    Monotone intensity map, then the bias field (it multiplies the signal), then noise:
    Rician (magnitude of complex Gaussian) or Gaussian clipped at 0.
    """
    signal = intensity_map(anatomy.sitefree, site) * bias_field(site, anatomy.grid.axes)
    sigma = site["noise"]["sigma_fraction_of_wm"] * float(intensity_map(INTENSITY["WM"], site))
    real = signal + rng.normal(0, sigma, signal.shape)
    if site["noise"]["kind"] == "rician":
        image = np.hypot(real, rng.normal(0, sigma, signal.shape))
    else:
        image = np.maximum(real, 0)
    return np.clip(np.rint(image), 0, 32767).astype(np.int16)
