"""Before/after report of an image harmonization: pictures, intensity distributions, per-scan numbers.

An image harmonizer maps every scan's intensities towards the reference site. Without a ground
truth, what can be judged is (1) by eye, whether anatomy is kept and contrast looks alike across
sites, and (2) by number, how far each scan's brain intensity distribution is from the
reference site's, before and after. The distance is the 1-Wasserstein distance between the
in-mask intensity distributions (the mean absolute difference of their 1st-99th percentiles),
in units of the reference site's interquartile range: 0 means the same distribution, 1 means
off by an IQR on average. It says nothing about anatomy, and a method can reach 0 by forcing
every histogram onto the reference (which histogram matching does by construction), so the
pictures and the tissue-level benchmarks (``benchmarks/bench_image_shifts.py``) stay needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluation.images import PERCENTILES, brain_percentiles, distribution_distance
from ..utils.io import atomic_write_text
from .group import _colors, _esc, _figure, _FigureWriter, _page, _table

__all__ = ["ImageHarmonizationSummary"]


class ImageHarmonizationSummary:
    """Collects each harmonized scan's intensity distribution and one example scan per site.

    Parameters
    ----------
    scans : ImageSet
        The scans before harmonization (images, masks, sites).
    method : str
    reference_site : str
    labels : sequence of str, optional
        One name per scan for the tables (default ``scan <k>``).
    """

    def __init__(self, scans, method: str, reference_site: str, labels=None):
        self.method = method
        self.reference_site = str(reference_site)
        self.sites = [str(s) for s in scans.sites]
        self.labels = list(labels) if labels is not None else [f"scan {k}" for k in range(len(self.sites))]
        self._masks = scans.masks
        self._before = [brain_percentiles(image, mask) for image, mask in zip(scans.images, scans.masks)]
        self._after: dict[int, np.ndarray] = {}
        self._examples = {}
        for row, site in enumerate(self.sites):
            self._examples.setdefault(site, [row, np.asarray(scans.images[row]), None])
        reference = [q for q, s in zip(self._before, self.sites) if s == self.reference_site]
        if not reference:
            raise ValueError(f"no scan of the reference site {self.reference_site!r}")
        self._reference = np.median(reference, axis=0)

    def add(self, row: int, harmonized: np.ndarray) -> None:
        """Record the harmonized image of scan ``row``."""
        self._after[row] = brain_percentiles(harmonized, self._masks[row])
        example = self._examples[self.sites[row]]
        if example[0] == row:
            example[2] = np.asarray(harmonized, dtype=np.float32)

    def per_scan(self) -> pd.DataFrame:
        """One row per harmonized scan: site, distance to the reference before and after, medians."""
        rows = []
        for row in sorted(self._after):
            before, after = self._before[row], self._after[row]
            rows.append({"scan": self.labels[row], "site": self.sites[row],
                         "distance_before": distribution_distance(before, self._reference),
                         "distance_after": distribution_distance(after, self._reference),
                         "median_before": float(before[49]), "median_after": float(after[49])})
        return pd.DataFrame(rows, columns=["scan", "site", "distance_before", "distance_after", "median_before",
                                           "median_after"])

    def per_site(self) -> pd.DataFrame:
        """Mean distance to the reference per site, before and after."""
        table = self.per_scan()
        grouped = table.groupby("site", sort=True)
        return pd.DataFrame({"site": list(grouped.groups), "scans": grouped.size().to_numpy(),
                             "distance_before": grouped["distance_before"].mean().to_numpy(),
                             "distance_after": grouped["distance_after"].mean().to_numpy()})

    def write_report(self, out_dir, *, figure_dir: str = "figures", dpi: int = 110) -> Path:
        """``out_dir/group_images_<method>.html`` with the pictures, the distributions and the tables."""
        out_dir = Path(out_dir)
        writer = _FigureWriter(out_dir, figure_dir, dpi, ("png",))
        name = f"images_{self.method}"
        per_site = self.per_site()
        headers = {"distance_before": "distance to reference, before", "distance_after": "after",
                   "median_before": "median intensity, before", "median_after": "after"}
        moved = per_site[per_site["site"] != self.reference_site]
        verdict = ("" if moved.empty else
                   f"<p>Sites other than the reference: mean distance {moved['distance_before'].mean():.3f} before, "
                   f"{moved['distance_after'].mean():.3f} after.</p>")
        sections = [
            f"<p>{len(self._after)} scans from {len(per_site)} sites harmonized with <b>{_esc(self.method)}</b> to "
            f"the reference site <b>{_esc(self.reference_site)}</b>. The distance is the 1-Wasserstein distance "
            "between a scan's brain intensity distribution and the reference site's (median of its scans' "
            "percentiles), in units of the reference's interquartile range: 0 = the same distribution. It rewards "
            "any map onto the reference histogram, so judge anatomy and contrast by the pictures.</p>" + verdict,
            "<h2 id='pictures'>Before and after</h2>" + self._fig_slices(writer, name),
            "<h2 id='distributions'>Brain intensity distributions</h2>" + self._fig_distributions(writer, name),
            "<h2 id='sites'>Per site</h2>" + _table(per_site, headers, left=("site",)),
            "<h2 id='scans'>Per scan</h2>" + _table(self.per_scan(), headers, left=("scan", "site")),
        ]
        return atomic_write_text(out_dir / f"group_{name}.html",
                                 _page(f"Image harmonization: {self.method}", sections))

    def _fig_slices(self, writer, name: str) -> str:
        examples = [(site, *self._examples[site]) for site in sorted(self._examples)
                    if self._examples[site][2] is not None]
        fig = _figure(6.0, 2.4 * len(examples) + 0.4)
        axes = fig.subplots(len(examples), 2, squeeze=False)
        for (site, row, before, after), (ax_before, ax_after) in zip(examples, axes):
            z = int(np.argmax(self._masks[row].sum(axis=(0, 1))))  # the axial slice with most brain
            limit = float(np.percentile(before[self._masks[row]], 99.5)), float(
                np.percentile(after[self._masks[row]], 99.5))
            for ax, image, top, title in ((ax_before, before, limit[0], "before"), (ax_after, after, limit[1], "after")):
                ax.imshow(np.rot90(image[:, :, z]), cmap="gray", vmin=0, vmax=top, interpolation="nearest")
                ax.set_title(f"{site}: {self.labels[row]}, {title}", fontsize=8)
                ax.set_axis_off()
        return writer.save(fig, f"{name}_slices", "One scan per site (its first), the axial slice with the most "
                           "brain, before and after harmonization; each image on its own grey scale (0 to its "
                           "99.5th brain percentile), so a contrast change shows, a global scaling does not.",
                           "before and after slices")

    def _fig_distributions(self, writer, name: str) -> str:
        fig = _figure(8.0, 3.2)
        axes = fig.subplots(1, 2, sharey=True)
        colors = _colors(sorted(set(self.sites)))
        for ax, quantiles, title in ((axes[0], self._before, "before"),
                                     (axes[1], self._after, f"after {self.method}")):
            for row in sorted(self._after):
                site = self.sites[row]
                values = quantiles[row]
                ax.plot(values, PERCENTILES, color=colors[site], lw=1, alpha=0.7)
            ax.plot(self._reference, PERCENTILES, color="k", lw=2, ls="--")
            ax.set_title(title)
            ax.set_xlabel("brain intensity")
        axes[0].set_ylabel("percentile")
        for site, color in colors.items():
            axes[1].plot([], [], color=color, label=site)
        axes[1].plot([], [], color="k", ls="--", label=f"reference ({self.reference_site})")
        axes[1].legend(fontsize=7, loc="lower right")
        return writer.save(fig, f"{name}_distributions", "Each scan's brain intensity percentiles (one line per "
                           "scan, coloured by site); dashed: the reference site's. Harmonization should bring every "
                           "line onto the dashed one.", "intensity distributions before and after")
