"""Group report: one HTML page that shows whether harmonization removed the site and kept biology.

:func:`write_group_report` takes the :class:`~bidsharmony.evaluation.EvaluationResults` of
:func:`bidsharmony.evaluation.evaluate_harmonizers` and writes ``group_report.html`` with its
figures beside it (``figures/group_*.png``, each also saved as SVG), embedded by relative
path. The page explains every number in plain words, so it can be read without the code.

Figures are drawn with Matplotlib's Agg canvas directly (no pyplot, no global backend
switch); Matplotlib's own configuration folder follows ``MPLCONFIGDIR`` when it is set.
Every file is written atomically.
"""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ..utils.io import atomic_path, atomic_write_text

FIGURE_DIR = "figures"
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf")

_STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; max-width: 1150px; margin: auto;
       padding: 0 1em 4em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; } h2 { margin-top: 2.2em; border-bottom: 1px solid #ccc; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .note { color: #555; font-size: .93em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .55em; text-align: right; }
th { background: #f1f1f1; } td.l, th.l { text-align: left; }
.warn { background: #fff5d6; border-left: 5px solid #e0a800; padding: .5em 1em; margin: .4em 0; }
.err { background: #fde2e1; border-left: 5px solid #c0392b; padding: .5em 1em; margin: .4em 0; }
.ok { background: #e6f4ea; border-left: 5px solid #2e7d32; padding: .5em 1em; margin: .4em 0; }
.glance li { margin: .3em 0; } code { background: #f4f4f4; padding: 0 .2em; }
nav a { margin-right: 1em; }
"""


# ------------------------------------------------------------------------------ helpers
def _esc(value) -> str:
    return html.escape(str(value))


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            return "–"
        magnitude = abs(float(value))
        if magnitude != 0 and (magnitude >= 1e5 or magnitude < 1e-3):
            return f"{float(value):.{digits}g}"
        return f"{float(value):.{digits}f}"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return _esc(value)


def _table(frame: pd.DataFrame, headers: dict | None = None, left=(), digits: int = 3) -> str:
    """A plain HTML table; ``left`` names columns aligned left (text)."""
    if frame is None or frame.empty:
        return "<p class='note'>(nothing to show)</p>"
    headers = headers or {}
    head = "".join(f"<th class='{'l' if c in left else ''}'>{_esc(headers.get(c, c))}</th>" for c in frame.columns)
    body = []
    for _, row in frame.iterrows():
        cells = "".join(f"<td class='{'l' if c in left else ''}'>{_fmt(row[c], digits)}</td>" for c in frame.columns)
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


class _FigureWriter:
    """Save figures as PNG + SVG under ``out_dir/figure_dir`` and return the HTML embedding them."""

    def __init__(self, out_dir: Path, figure_dir: str, dpi: int, formats=("png", "svg")):
        self.out_dir = Path(out_dir)
        self.figure_dir = figure_dir
        self.dpi = dpi
        self.formats = tuple(formats)
        self.written: list[Path] = []

    def save(self, fig, name: str, caption: str, alt: str) -> str:
        paths = {}
        for fmt in self.formats:
            path = self.out_dir / self.figure_dir / f"group_{name}.{fmt}"
            metadata = {"Date": None} if fmt == "svg" else {"Software": None}
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=self.dpi, metadata=metadata)
            paths[fmt] = path
            self.written.append(path)
        shown = paths.get("png") or next(iter(paths.values()))
        rel = shown.relative_to(self.out_dir).as_posix()
        links = " · ".join(f"<a href='{p.relative_to(self.out_dir).as_posix()}'>{fmt.upper()}</a>"
                           for fmt, p in paths.items())
        return (f"<figure><img src='{rel}' alt='{_esc(alt)}'><figcaption>{caption} "
                f"<span class='note'>[{links}]</span></figcaption></figure>")


def _colors(labels) -> dict:
    return {label: _PALETTE[i % len(_PALETTE)] for i, label in enumerate(labels)}


def _method_label(results, method: str) -> str:
    if method == results.raw_method:
        return f"{method} (no harmonization)"
    return method


# ------------------------------------------------------------------------------ figures
def _fig_design(results, writer) -> str:
    cov = results.covariates
    if "age" not in cov:
        return ""
    sites = cov["site"].astype(str).to_numpy()
    labels = sorted(set(sites))
    colors = _colors(labels)
    fig = _figure(max(4.5, 1.2 * len(labels) + 2), 3.2)
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    for i, site in enumerate(labels):
        age = pd.to_numeric(cov["age"], errors="coerce").to_numpy()[sites == site]
        ax.scatter(i + rng.uniform(-0.18, 0.18, len(age)), age, s=8, alpha=0.5, color=colors[site])
        ax.plot([i - 0.3, i + 0.3], [np.min(age)] * 2, color="k", lw=1)
        ax.plot([i - 0.3, i + 0.3], [np.max(age)] * 2, color="k", lw=1)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel("site")
    ax.set_ylabel("age (years)")
    ax.set_title("Age of the scans at each site (bars: youngest and oldest)")
    return writer.save(fig, "design_age", "Age of every scan by site. Harmonizers learn site effects where the "
                       "age ranges of sites overlap; outside the overlap they extrapolate.", "age by site")


def _fig_site_predictability(results, writer) -> str:
    table = results.site_predictability
    if table is None or table.empty:
        return ""
    methods = list(table["method"])
    fig = _figure(6.5, 0.55 * len(methods) + 1.6)
    ax = fig.add_subplot()
    y = np.arange(len(methods))[::-1]
    colors = _colors(methods)
    ax.barh(y, table["balanced_accuracy"], xerr=table["balanced_accuracy_sd"].fillna(0),
            color=[colors[m] for m in methods], alpha=0.85, capsize=3)
    chance = float(table["chance"].iloc[0])
    upper = float(table["chance_upper95"].iloc[0])
    ax.axvspan(0, upper, color="grey", alpha=0.12, label=f"within chance (≤ {upper:.2f})")
    ax.axvline(chance, color="k", ls="--", lw=1.2, label=f"chance = 1/{int(table['n_sites'].iloc[0])} = {chance:.2f}")
    ax.set_yticks(y, [_method_label(results, m) for m in methods])
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("balanced accuracy of predicting the site from the features")
    ax.legend(loc="lower right", fontsize=8)
    return writer.save(fig, "site_predictability",
                       "How well a classifier recognises the site of a scan from its features (cross-validated; "
                       "error bars: SD over the folds of every repeat). After a successful harmonization the bar should fall to the "
                       "dashed chance line, inside the grey band.", "site predictability bars")


def _fig_mmd(results, writer) -> str:
    mmd = results.mmd
    if mmd is None or mmd.empty:
        return ""
    vs = mmd[mmd["comparison"] == "vs_reference"]
    if vs.empty:
        return ""
    methods = [m for m in results.methods if m in set(vs["method"])]
    targets = sorted(set(vs["site_b"]))
    colors = _colors(methods)
    fig = _figure(max(6.5, 1.3 * len(targets) + 4.5), 3.4)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        part = vs[vs["method"] == method].set_index("site_b").reindex(targets)
        ax.bar(np.arange(len(targets)) + (i - (len(methods) - 1) / 2) * width, part["mmd2"], width,
               color=colors[method], label=_method_label(results, method))
    split = mmd[(mmd["comparison"] == "split_half")]
    if len(split):
        level = float(split["mmd2"].abs().max())
        ax.axhline(level, color="k", ls=":", lw=1, label="no-difference level (split-half)")
    ax.axhline(0, color="k", lw=0.8)
    ref = vs["site_a"].iloc[0]
    ax.set_xticks(range(len(targets)), [f"{t} vs {ref}" for t in targets])
    ax.set_ylabel("MMD² (unbiased)")
    ax.set_title(f"Distance of each site to the reference site {ref}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return writer.save(fig, "mmd", "Maximum mean discrepancy between the joint feature distribution of each site "
                       "and the reference site (0 = indistinguishable; the dotted line is what two random halves "
                       "of the same site give). Lower is better.", "MMD bars")


def _fig_cross_site(results, writer) -> str:
    cross = results.cross_site
    if cross is None or cross.empty:
        return ""
    panels = [(t, m) for t, m in (("age", "mae"), ("diagnosis", "accuracy"))
              if ((cross["task"] == t) & (cross["metric"] == m)).any()]
    if not panels:
        return ""
    order = ["TarOnly"] + [m for m in results.methods]
    fig = _figure(max(6.0, 2.2 * len(panels) + 4), 3.3 * len(panels) + 0.4)
    colors = _colors(order)
    for k, (task, metric) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, k + 1)
        part = cross[(cross["task"] == task) & (cross["metric"] == metric)
                     & (cross["source_site"] != cross["target_site"])]
        pairs = sorted(set(zip(part["source_site"], part["target_site"])))
        methods = [m for m in order if m in set(part["method"])]
        width = 0.8 / max(1, len(methods))
        for i, method in enumerate(methods):
            sub = part[part["method"] == method].set_index(["source_site", "target_site"]).reindex(pairs)
            label = "TarOnly (upper bound)" if method == "TarOnly" else (
                f"{method} = SrcOnly (lower bound)" if method == results.raw_method else method)
            ax.bar(np.arange(len(pairs)) + (i - (len(methods) - 1) / 2) * width, sub["value"], width,
                   yerr=sub["se"].fillna(0), color=colors[method], label=label, capsize=2,
                   hatch="//" if method == "TarOnly" else None, alpha=0.9)
        ax.set_xticks(range(len(pairs)), [f"{s}→{t}" for s, t in pairs])
        ax.set_ylabel("MAE (years)" if metric == "mae" else "accuracy")
        ax.set_title(("Age prediction error" if task == "age" else "Diagnosis classification accuracy")
                     + " when training on one site and testing on another"
                     + (" (lower is better)" if metric == "mae" else " (higher is better)"), fontsize=10)
        if k == len(panels) - 1:
            ax.legend(fontsize=8, ncol=min(5, len(methods)), loc="upper center", bbox_to_anchor=(0.5, -0.12),
                      frameon=False)
    return writer.save(fig, "cross_site", "Cross-site prediction (source→target). The hatched bar is the best one "
                       "can hope for (a model trained on the target site itself), the raw bar what one gets without "
                       "harmonization. Error bars: standard error over folds.", "cross-site prediction")


def _choose_rois(results, rois, max_rois: int) -> list:
    features = results.features
    if rois:
        unknown = [r for r in rois if r not in features.columns]
        if unknown:
            raise ValueError(f"ROI(s) {', '.join(map(str, unknown))} are not feature columns")
        return list(rois)
    sites = results.covariates["site"].astype(str).to_numpy()
    scores = {}
    for column in features.columns:
        values = features[column].to_numpy(dtype=float)
        total = ((values - values.mean()) ** 2).sum()
        between = sum(((values[sites == s].mean() - values.mean()) ** 2) * (sites == s).sum() for s in set(sites))
        scores[column] = between / total if total > 0 else 0.0
    return sorted(scores, key=lambda c: -scores[c])[:max_rois]


def _violins(ax, groups, colors, labels):
    positions = np.arange(len(groups))
    for pos, values, label in zip(positions, groups, labels):
        values = np.asarray(values, dtype=float)
        drawn = False
        if len(values) > 2 and np.ptp(values) > 0:
            try:
                parts = ax.violinplot([values], positions=[pos], widths=0.8, showmedians=True)
                for body in parts["bodies"]:
                    body.set_facecolor(colors[label])
                    body.set_alpha(0.6)
                drawn = True
            except (ValueError, np.linalg.LinAlgError):
                drawn = False
        if not drawn:
            ax.scatter(np.full(len(values), pos), values, s=8, color=colors[label])
    ax.set_xticks(positions, labels, fontsize=8)


def _fig_distributions(results, writer, rois) -> str:
    if not rois:
        return ""
    columns = [m for m in results.methods if m in results.harmonized]
    tables = {m: results.harmonized[m] for m in columns}
    if results.truth is not None:
        columns.append("truth")
        tables["truth"] = results.truth
    sites = results.covariates["site"].astype(str).to_numpy()
    labels = sorted(set(sites))
    colors = _colors(labels)
    fig = _figure(2.6 * len(columns) + 0.8, 2.3 * len(rois) + 0.6)
    axes = fig.subplots(len(rois), len(columns), squeeze=False, sharey="row")
    for r, roi in enumerate(rois):
        for c, method in enumerate(columns):
            ax = axes[r, c]
            values = tables[method][roi].to_numpy(dtype=float)
            _violins(ax, [values[sites == s] for s in labels], colors, labels)
            if r == 0:
                ax.set_title("ground truth" if method == "truth" else _method_label(results, method), fontsize=9)
            if c == 0:
                ax.set_ylabel(str(roi), fontsize=9)
    return writer.save(fig, "distributions", "Distribution of selected features at each site (violins: density; "
                       "line: median), before (raw) and after each harmonization"
                       + (", and the ground truth" if results.truth is not None else "")
                       + ". Site differences that are not explained by age, sex or diagnosis should disappear, "
                       "while the spread between people (biology) should remain.", "feature distributions")


def _fig_effects(results, writer) -> str:
    eff = results.effect_sizes
    if eff is None or eff.empty:
        return ""
    terms = list(dict.fromkeys(eff["term"]))
    harmonized = [m for m in results.methods if m != results.raw_method and m in set(eff["method"])]
    has_truth = "truth" in set(eff["method"])
    rows = []
    if results.raw_method in set(eff["method"]) and harmonized:
        rows.append(("raw", results.raw_method, harmonized))
    if has_truth:
        rows.append(("truth", "truth", [m for m in results.methods if m in set(eff["method"])]))
    if not rows:
        return ""
    colors = _colors(results.methods)
    fig = _figure(3.2 * len(terms) + 0.5, 3.1 * len(rows))
    axes = fig.subplots(len(rows), len(terms), squeeze=False)
    for r, (kind, reference, methods) in enumerate(rows):
        ref = eff[eff["method"] == reference]
        for c, term in enumerate(terms):
            ax = axes[r, c]
            x = ref[ref["term"] == term].set_index("feature")["std_effect"]
            lims = [x.min(), x.max()]
            for method in methods:
                y = eff[(eff["method"] == method) & (eff["term"] == term)].set_index("feature")["std_effect"]
                y = y.reindex(x.index)
                ax.scatter(x, y, s=12, alpha=0.7, color=colors[method], label=method)
                lims += [y.min(), y.max()]
            lo, hi = np.nanmin(lims), np.nanmax(lims)
            pad = 0.05 * (hi - lo if hi > lo else 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="k", lw=0.8, ls="--")
            ax.axhline(0, color="grey", lw=0.5)
            ax.axvline(0, color="grey", lw=0.5)
            ax.set_xlabel(f"{term}: effect size, {'raw data' if kind == 'raw' else 'ground truth'}", fontsize=8)
            ax.set_ylabel(f"{term}: effect size, {'harmonized' if kind == 'raw' else 'method'}", fontsize=8)
            if c == 0:
                ax.legend(fontsize=7)
    return writer.save(fig, "effect_sizes", "Each point is one feature: its standardised association with the "
                       "covariate (coefficient / residual SD; age per SD of age). Points on the dashed diagonal "
                       "mean the association is unchanged (top: harmonized vs raw) or correct (bottom: vs the ground "
                       "truth). Harmonization removes site noise, so effects may grow slightly; flipped signs or "
                       "collapse towards 0 mean biology was removed.", "effect size scatter")


def _fig_icc(results, writer) -> str:
    table = results.icc
    if table is None or table.empty:
        return ""
    methods = [m for m in results.methods if m in set(table["method"])]
    fig = _figure(max(4.5, 1.3 * len(methods) + 2), 3.2)
    ax = fig.add_subplot()
    data = [table[table["method"] == m]["icc_2_1"].dropna().to_numpy() for m in methods]
    ax.boxplot(data, positions=range(len(methods)), widths=0.5)
    rng = np.random.default_rng(0)
    colors = _colors(methods)
    for i, values in enumerate(data):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=8, alpha=0.6, color=colors[methods[i]])
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylim(min(0.0, min((v.min() for v in data if len(v)), default=0.0)), 1.02)
    ax.set_ylabel("ICC(2,1) across sites")
    n = int(table["n_subjects"].iloc[0])
    ax.set_title(f"Agreement of traveling subjects across sites ({n} participants)", fontsize=10)
    return writer.save(fig, "icc", "ICC(2,1) (absolute agreement) of each feature for participants scanned at "
                       "several sites: 1 means the same person gets the same value at every site. Higher is "
                       "better.", "ICC boxplots")


# ------------------------------------------------------------------------------- text
def _glance(results) -> str:
    items = []
    summary = results.summary.set_index("method") if len(results.summary) else pd.DataFrame()
    raw = results.raw_method
    harmonized = [m for m in results.methods if m != raw]

    def val(method, column):
        if method in summary.index and column in summary.columns:
            value = summary.loc[method, column]
            return float(value) if pd.notna(value) else None
        return None

    recommendation = getattr(results, "recommendation", None) or {}
    if recommendation.get("method"):
        items.append(f"<b>Recommended for this data: {_esc(recommendation['method'])}</b> — "
                     f"{_esc(recommendation['reason'])}. (Rule: methods that change the age effects are "
                     "excluded; differences smaller than one SD over folds and repeats are not taken as real.)"
                     + "".join(f" {_esc(m)} excluded: {_esc(why)}." for m, why in recommendation["excluded"].items()))
    elif recommendation.get("reason"):
        items.append(f"<b>No method recommended</b>: {_esc(recommendation['reason'])}.")
    if "site_balanced_accuracy" in summary.columns:
        chance = val(results.methods[0], "site_chance")
        upper = val(results.methods[0], "site_chance_upper95")
        parts = []
        for method in results.methods:
            acc = val(method, "site_balanced_accuracy")
            if acc is None:
                continue
            verdict = "at chance" if upper is not None and acc <= upper else "site still detectable"
            parts.append(f"<b>{_esc(method)}</b> {acc:.2f} ({verdict})")
        if parts:
            items.append(f"Site predictability (chance {chance:.2f}, chance range up to {upper:.2f}): "
                         + "; ".join(parts) + ".")
    if "cross_site_age_mae" in summary.columns and raw is not None:
        src, tar = val(raw, "cross_site_age_mae"), val("TarOnly", "cross_site_age_mae")
        if src is not None and tar is not None:
            parts = [f"SrcOnly (raw) {src:.2f} y", f"TarOnly {tar:.2f} y"]
            for method in harmonized:
                mae = val(method, "cross_site_age_mae")
                if mae is None:
                    continue
                gap = (src - mae) / (src - tar) if abs(src - tar) > 1e-9 else float("nan")
                if not math.isfinite(gap):
                    gap_text = ""
                elif gap >= 0:
                    gap_text = f", closes {100 * gap:.0f}% of the gap between SrcOnly and TarOnly"
                else:
                    gap_text = ", worse than no harmonization"
                parts.append(f"<b>{_esc(method)}</b> {mae:.2f} y{gap_text}")
            items.append("Cross-site age error (mean over source→target pairs): " + "; ".join(parts) + ".")
    if "cross_site_diagnosis_accuracy" in summary.columns and raw is not None:
        parts = [f"{_esc(m)} {val(m, 'cross_site_diagnosis_accuracy'):.2f}" for m in [raw, *harmonized, "TarOnly"]
                 if val(m, "cross_site_diagnosis_accuracy") is not None]
        items.append("Cross-site diagnosis accuracy: " + "; ".join(parts) + ".")
    for column, label in (("age_effect_r_vs_raw", "Age effects kept (correlation with raw across features)"),
                          ("age_effect_r_vs_truth", "Age effects vs ground truth (correlation)")):
        if column in summary.columns:
            parts = [f"{_esc(m)} {val(m, column):.2f}" for m in results.methods if val(m, column) is not None]
            if parts:
                items.append(f"{label}: " + "; ".join(parts) + ".")
    if "icc_2_1_median" in summary.columns:
        parts = [f"{_esc(m)} {val(m, 'icc_2_1_median'):.2f}" for m in results.methods
                 if val(m, "icc_2_1_median") is not None]
        items.append("Traveling subjects, median ICC(2,1): " + "; ".join(parts) + ".")
    if not items:
        return ""
    return "<ul class='glance'>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _cross_site_table(results) -> str:
    cross = results.cross_site
    if cross is None or cross.empty:
        return ""
    order = ["TarOnly"] + list(results.methods)
    blocks = []
    for (task, metric), part in cross.groupby(["task", "metric"], sort=False):
        if metric == "balanced_accuracy":
            continue
        pivot = part.pivot_table(index=["source_site", "target_site"], columns="method", values="value",
                                 aggfunc="first")
        pivot = pivot[[m for m in order if m in pivot.columns]].reset_index()
        baseline = part.groupby(["source_site", "target_site"])["baseline"].first().reset_index()
        pivot = pivot.merge(baseline, on=["source_site", "target_site"], how="left")
        headers = {"source_site": "source (train)", "target_site": "target (test)",
                   "baseline": "ignoring features" if metric == "mae" else "majority class",
                   "TarOnly": "TarOnly (upper bound)"}
        if results.raw_method:
            headers[results.raw_method] = f"{results.raw_method} = SrcOnly (lower bound)"
        unit = "mean absolute error, years — lower is better" if metric == "mae" else "accuracy — higher is better"
        blocks.append(f"<h3>{_esc(task)}: {unit}</h3>" + _table(pivot, headers, left=("source_site", "target_site"))
                      + "<p class='note'>Rows where source and target are the same site are within-site "
                      "cross-validation (the 'Source' rows of Wang et al.); the last column is a predictor that "
                      "ignores the features.</p>")
    return "".join(blocks)


def _loglik_table(results) -> str:
    table = results.log_likelihood
    if table is None or table.empty:
        return ""
    finite = table.dropna(subset=["log_likelihood_train", "log_likelihood_test"], how="all")
    if finite.empty:
        return ""
    summary = finite.groupby("method")[["log_likelihood_train", "log_likelihood_test"]].agg(["mean", "std"])
    summary.columns = [f"{a} ({b})" for a, b in summary.columns]
    return ("<h2 id='loglik'>Model log-likelihood</h2><p class='note'>Reported by harmonizers that model the "
            "data density (e.g. flow-based SCMs): mean log-likelihood per scan on the training folds and on the "
            "held-out folds (mean and SD over folds). Higher is better; a large train/test gap suggests "
            "overfitting.</p>" + _table(summary.reset_index(), left=("method",)))


def write_group_report(results, out_dir, *, rois=None, max_rois: int = 3, filename: str = "group_report.html",
                       title: str = "Harmonization report", figure_dir: str = FIGURE_DIR, dpi: int = 110,
                       formats=("png", "svg"), protected=None) -> Path:
    """Write the group HTML report of an evaluation.

    Parameters
    ----------
    results : bidsharmony.evaluation.EvaluationResults
        Output of :func:`bidsharmony.evaluation.evaluate_harmonizers`.
    out_dir : path-like
        Folder of the report; figures go to ``out_dir/figure_dir``.
    rois : sequence of str, optional
        Features whose per-site distributions are shown. Default: the ``max_rois`` features
        whose raw values depend most on site (largest share of variance between sites).
    max_rois : int
    filename : str
        Name of the HTML file.
    title : str
    figure_dir : str
        Sub-folder of ``out_dir`` for the figures (embedded by relative path).
    dpi : int
        Resolution of the PNG files.
    formats : sequence of str
        Figure formats written; the first of PNG/other is embedded, all are linked.
    protected : dict, optional
        Covariates declared with ``--protect`` and their coding; the report says which effects
        were kept, and that undeclared ones cannot be.

    Returns
    -------
    pathlib.Path
        The HTML file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = _FigureWriter(out_dir, figure_dir, dpi, formats)
    chosen = _choose_rois(results, rois, max_rois)
    cfg = results.config
    adjusted = _esc(str(cfg.get("site_adjust_for", "nothing")).replace(",", ", "))
    sections = [
        _intro_section(results),
        _protected_section(protected),
        _failed_section(results),
        _glance_section(results),
        _design_section(results, writer),
        _summary_section(results),
        _site_section(results, writer, adjusted),
        _mmd_section(results, writer, adjusted),
        _cross_site_section(results, writer),
        _distributions_section(results, writer, chosen, user_chosen=bool(rois)),
        _biology_section(results, writer),
        _truth_section(results),
        _icc_section(results, writer),
        _loglik_table(results),
        _settings_section(cfg),
    ]
    return atomic_write_text(out_dir / filename, _page(title, [s for s in sections if s]))


def _intro_section(results) -> str:
    """What was compared, and how the folds keep every number leakage-free."""
    cfg = results.config
    methods_text = ", ".join(f"<b>{_esc(m)}</b>" for m in results.methods if m != results.raw_method) or "none"
    return (
        f"<p>{cfg.get('n_scans')} scans of {cfg.get('n_features')} features from {cfg.get('n_sites')} sites were "
        f"used to compare the raw data with: {methods_text}. Every number below was computed on data the "
        f"harmonizer had <b>not</b> been fitted on: the scans were split into {cfg.get('n_splits')} folds (all scans "
        "of a participant in the same fold, every site in every fold); in each fold a fresh harmonizer was fitted on "
        "the training scans only and then applied to the held-out scans. Harmonizing the whole data set before "
        "splitting would let test scans leak into the correction (Marzi et al., Sci Data 2024).</p>")


def _protected_section(protected) -> str:
    """Which effects every method kept, and why an undeclared one cannot be."""
    kept = ", ".join(f"<b>{_esc(c)}</b>" for c in (protected or {}))
    return (
        "<p class='note'>Kept in every method's model: age, sex"
        + (f" and the protected covariate(s) {kept}" if kept else "") + ". An effect that is not declared "
        "and differs between sites — a disease more common at one site, say — cannot be told apart from the "
        "site effect: every method removes part of it. Declare such a column with <code>--protect</code>"
        + (" (done here for the columns above)." if kept else ".") + "</p>")


def _failed_section(results) -> str:
    return "".join(f"<div class='err'><b>{_esc(m)} failed</b>: {_esc(msg)}</div>"
                   for m, msg in results.failed.items())


def _glance_section(results) -> str:
    glance = _glance(results)
    return "<h2 id='glance'>At a glance</h2>" + glance if glance else ""


_AGE_PAIR_CODES = ("age_no_overlap", "age_poor_overlap")


def _design_section(results, writer) -> str:
    """The design warnings, the table of sites and the design figure.

    Age-overlap warnings come one per pair of sites (120 pairs for 16 sites), so they are
    condensed into one paragraph and two columns of the site table.
    """
    age_pairs = [w for w in results.warnings if w.get("code") in _AGE_PAIR_CODES and "pair" in w]
    warn_html = _age_overlap_note(age_pairs, len(results.sites)) + "".join(
        f"<div class='warn'>{_esc(w['message'])}</div>" for w in results.warnings
        if w.get("code") != "harmonizer_failed" and w not in age_pairs)
    site_headers = {"n_scans": "scans", "n_participants": "participants", "age_min": "age min", "age_max": "age max",
                    "age_mean": "age mean", "age_sd": "age SD", "n_female": "female", "n_male": "male",
                    "diagnosis_counts": "diagnosis", "age_apart": "no age overlap with",
                    "age_partial": "little age overlap with (% of the narrower range)"}
    sites = _with_age_overlap_columns(results.sites, age_pairs)
    return ("<h2 id='design'>Data and warnings</h2>"
            + (warn_html or "<div class='ok'>No design problems found (site sizes, age overlap, sex and "
               "diagnosis coverage).</div>")
            + _table(sites, site_headers, left=("site", "diagnosis_counts", "age_apart", "age_partial"), digits=1)
            + _fig_design(results, writer))


def _age_overlap_note(age_pairs: list, n_sites: int) -> str:
    if not age_pairs:
        return ""
    n_apart = sum(w["code"] == "age_no_overlap" for w in age_pairs)
    n_partial = len(age_pairs) - n_apart
    threshold = 100 * min(w["min_overlap"] for w in age_pairs)
    n_pairs = n_sites * (n_sites - 1) // 2
    parts = []
    if n_apart:
        parts.append(f"{n_apart} of the {n_pairs} pairs of sites have age ranges that do not overlap: between "
                     "them age and site are confounded, and no method can tell an ageing effect from a site "
                     "effect")
    if n_partial:
        parts.append(f"{n_partial} pairs overlap for less than {threshold:.0f}% of the narrower range, so site "
                     "effects there are partly extrapolated")
    return (f"<div class='warn'>{'; '.join(parts)}. The last columns of the site table name the sites "
            "concerned; the figure below shows each site's ages.</div>")


def _with_age_overlap_columns(sites: pd.DataFrame, age_pairs: list) -> pd.DataFrame:
    """``sites`` plus, per site, the sites it shares no or little age range with."""
    if not age_pairs or sites is None or sites.empty:
        return sites
    apart = {site: [] for site in sites["site"].astype(str)}
    partial = {site: [] for site in apart}
    for w in age_pairs:
        a, b = (str(s) for s in w["pair"])
        if w["code"] == "age_no_overlap":
            apart[a].append(b)
            apart[b].append(a)
        else:
            partial[a].append(f"{b} ({100 * w['overlap']:.0f}%)")
            partial[b].append(f"{a} ({100 * w['overlap']:.0f}%)")
    out = sites.copy()
    out["age_apart"] = [", ".join(sorted(apart[s])) for s in out["site"].astype(str)]
    out["age_partial"] = [", ".join(sorted(partial[s])) for s in out["site"].astype(str)]
    return out


def _summary_section(results) -> str:
    """The summary table, transposed: one row per metric, one column per method."""
    if not len(results.summary):
        return ""
    from ..evaluation.evaluate import SUMMARY_COLUMNS

    summary = results.summary.set_index("method")
    rows = []
    for column in summary.columns:
        values = summary[column]
        if values.isna().all() or (column.endswith("_sd") and column[:-3] in summary):
            continue
        if f"{column}_sd" in summary:
            values = pd.Series({m: _with_sd(values[m], summary.at[m, f"{column}_sd"]) for m in summary.index})
        label, better = SUMMARY_COLUMNS.get(column, (column, ""))
        rows.append({"metric": label, "better is": better, **{m: values[m] for m in summary.index}})
    table = pd.DataFrame(rows)
    headers = {m: _method_label(results, m) if m != "TarOnly" else "TarOnly (cross-site upper bound)"
               for m in summary.index}
    cfg = results.config
    n_repeats = int(cfg.get("n_repeats", 1))
    spread = (f"{cfg.get('n_splits')} folds × {n_repeats} repeats (seeds {', '.join(map(str, cfg.get('seeds', [])))}; "
              "each repeat has new folds and reseeds the harmonizers and classifiers)" if n_repeats > 1 else
              f"the {cfg.get('n_splits')} folds of one repeat (more with --evaluate-repeats)")
    return ("<h2 id='summary'>Comparison table</h2><p class='note'>One column per method, one row per "
            "headline number; a dash means the metric does not apply. Each is explained in the "
            f"sections below. ± is the SD over {_esc(spread)}.</p>"
            + _table(table, headers, left=("metric", "better is")))


def _with_sd(value, sd) -> str | float:
    if not np.isfinite(value) or not np.isfinite(sd):
        return value
    return f"{value:.3f} ± {sd:.3f}"


def _site_section(results, writer, adjusted: str) -> str:
    if not len(results.site_predictability):
        return ""
    return (
        "<h2 id='site'>Can the site still be recognised?</h2><p class='note'>A classifier "
        f"({_esc(results.config.get('site_classifier'))}) learns to predict the site from all features, after the "
        f"effects of {adjusted} were removed (learnt on the training folds), so that a site is "
        "not recognised merely by the age of its participants. Balanced accuracy "
        "averages the hit rate of every site, so its chance level is exactly 1/(number of sites) whatever the "
        "site sizes; the grey band is the range a classifier that only guesses would reach 95% of the time.</p>"
        + _fig_site_predictability(results, writer))


def _mmd_section(results, writer, adjusted: str) -> str:
    if not len(results.mmd):
        return ""
    return ("<h2 id='mmd'>Do the feature distributions of the sites match?</h2><p class='note'>The "
            "maximum mean discrepancy (MMD², unbiased, Gaussian kernel with the median-distance "
            "bandwidth) compares all features of two sites at once, after removing the effects of "
            f"{adjusted} and scaling every feature to unit variance.</p>"
            + _fig_mmd(results, writer))


def _cross_site_section(results, writer) -> str:
    if not len(results.cross_site):
        return ""
    cfg = results.config
    masked = cfg.get("mask_target_in_transform")
    return (
        "<h2 id='cross'>Does a model trained at one site work at another?</h2><p class='note'>Following Wang et "
        f"al. (2021), a predictor ({_esc(cfg.get('predictor'))}; the MLP is 72→36 hidden units with LeakyReLU) is "
        "trained on one source site and tested on each other site. <b>SrcOnly</b> uses the raw features (lower "
        "bound); <b>TarOnly</b> trains and tests within the target site (upper bound). A good harmonization "
        "moves the cross-site result from SrcOnly towards TarOnly. "
        + ("The age/diagnosis of test scans was hidden from the harmonizer while transforming them."
           if masked else "As in the paper, harmonizers received the true age/diagnosis of test scans when "
           "transforming them; methods that model these covariates can pass some of that information into the "
           "features.") + "</p>" + _fig_cross_site(results, writer) + _cross_site_table(results))


def _distributions_section(results, writer, chosen, *, user_chosen: bool) -> str:
    if not chosen:
        return ""
    return ("<h2 id='distributions'>Feature distributions by site</h2><p class='note'>Features shown: "
            + ", ".join(f"<code>{_esc(r)}</code>" for r in chosen)
            + (" (chosen by the user)." if user_chosen else " (the features whose raw values differ most "
               "between sites).") + "</p>" + _fig_distributions(results, writer, chosen))


def _biology_section(results, writer) -> str:
    if not len(results.effect_sizes):
        return ""
    agreement = results.effect_agreement
    cols = [c for c in ("method", "term", "n_features", "r_vs_raw", "mean_abs_diff_vs_raw", "r_vs_truth",
                        "mean_abs_diff_vs_truth") if c in agreement.columns]
    headers = {"r_vs_raw": "r with raw", "mean_abs_diff_vs_raw": "mean |difference| to raw",
               "r_vs_truth": "r with truth", "mean_abs_diff_vs_truth": "mean |difference| to truth",
               "n_features": "features"}
    return (
        "<h2 id='biology'>Is the biology kept?</h2><p class='note'>For every feature a linear model "
        "feature ~ age + sex (+ diagnosis) gives the association of each covariate, standardised by the "
        "residual spread. Harmonization should keep these associations (correlation across features close to "
        "1) and, where the truth is known, bring them closer to it.</p>" + _fig_effects(results, writer)
        + _table(agreement[cols], headers, left=("method", "term")))


def _truth_section(results) -> str:
    if not len(results.truth_error):
        return ""
    te = results.truth_error.groupby("method")[["rmse", "nrmse", "rmse_centered", "nrmse_centered"]].mean()
    te = te.reindex([m for m in results.methods if m in te.index]).reset_index()
    return ("<h2 id='truth'>Distance to the ground truth</h2><p class='note'>Mean over features of the "
            "root-mean-square error to the known site-free values (nrmse: as a share of the truth's SD; "
            "centred: ignoring a constant offset per feature, which a method mapping to a reference site "
            "may legitimately have). Lower is better.</p>" + _table(te, left=("method",)))


def _icc_section(results, writer) -> str:
    if not len(results.icc):
        return ""
    return ("<h2 id='icc'>Traveling subjects</h2><p class='note'>ICC(2,1) is the two-way random-effects, "
            "absolute-agreement intraclass correlation: a constant offset between sites lowers it, which is "
            "what harmonization must remove. ICC(3,1) (consistency) ignores such offsets and is given in "
            "the comparison table for reference.</p>" + _fig_icc(results, writer))


def _settings_section(cfg: dict) -> str:
    """The evaluation's settings, the bidsharmony version and when the report was written."""
    from .._version import __version__

    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    settings = {k: v for k, v in cfg.items() if k not in ("harmonizers",)}
    return ("<h2 id='settings'>Settings</h2><p class='note'>bidsharmony "
            f"{_esc(__version__)}, report written {created}.</p>"
            + _table(pd.DataFrame({"setting": list(settings), "value": [str(v) for v in settings.values()]}),
                     left=("setting", "value")))


def _page(title: str, sections: list) -> str:
    """The HTML page: the title, a navigation bar to the sections present, the sections."""
    nav = "".join(f"<a href='#{a}'>{t}</a>" for a, t in (
        ("glance", "At a glance"), ("design", "Data"), ("summary", "Table"), ("site", "Site"), ("mmd", "Distance"),
        ("cross", "Cross-site"), ("distributions", "Distributions"), ("biology", "Biology"), ("truth", "Truth"),
        ("icc", "Traveling subjects"), ("settings", "Settings")) if f"id='{a}'" in "".join(sections))
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{_esc(title)}</h1><nav>{nav}</nav>"
            + "".join(sections) + "</body></html>\n")
