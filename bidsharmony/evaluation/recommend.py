"""Which harmonizer to use, drawn from an evaluation's summary table.

The rule is the one a careful reader of the report would apply, written down so that it is the
same for every study: a method that changes the age effects of the features (correlation with
the raw effects below ``min_age_r``, or more than ``age_r_margin`` below the best method's) is
not a candidate, whatever its other scores. The raw effects are not the truth (where age and
site are confounded, removing site rightly changes them), hence the loose absolute bound and
the comparison between methods. Among the
candidates, the ones whose site predictability is within one SD (over folds and repeats) of the
lowest are indistinguishable on site removal, and of those the one with the lowest cross-site
age error is chosen (or the lowest site predictability when age error was not measured).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["recommend_method"]

_BOUND = "TarOnly"


def recommend_method(summary: pd.DataFrame, raw_method: str | None = None, *, min_age_r: float = 0.8,
                     age_r_margin: float = 0.05) -> dict:
    """The method the figures favour, with the reason in words.

    Parameters
    ----------
    summary : pandas.DataFrame
        :attr:`EvaluationResults.summary` (one row per method).
    raw_method : str, optional
        The unharmonized row, never recommended.
    min_age_r : float
        Smallest correlation of the age effects with the raw ones for a method to be a candidate.
    age_r_margin : float
        A method whose correlation is more than this below the best method's is not a candidate.

    Returns
    -------
    dict
        ``method`` (None when nothing qualifies), ``reason``, ``indistinguishable`` (methods
        within one SD of the best site predictability) and ``excluded`` (``{method: why}``).
    """
    table = summary.set_index("method") if "method" in summary else summary
    methods = [m for m in table.index if m not in (raw_method, _BOUND)]
    excluded = {}
    age_r = {m: _value(table, m, "age_effect_r_vs_raw") for m in methods}
    best_r = max((r for r in age_r.values() if r is not None), default=None)
    for method in methods:
        r = age_r[method]
        if r is not None and r < min_age_r:
            excluded[method] = f"age effects changed (correlation with raw {r:.3f} < {min_age_r})"
        elif r is not None and r < best_r - age_r_margin:
            excluded[method] = (f"age effects changed more than by the others (correlation with raw {r:.3f}, "
                                f"best {best_r:.3f})")
        elif _value(table, method, "site_balanced_accuracy") is None:
            excluded[method] = "site predictability not measured"
    candidates = [m for m in methods if m not in excluded]
    if not candidates:
        return {"method": None, "reason": "no harmonizer qualifies: " + "; ".join(
            f"{m}: {why}" for m, why in excluded.items()) if excluded else "no harmonizer was evaluated",
            "indistinguishable": [], "excluded": excluded}
    site = {m: _value(table, m, "site_balanced_accuracy") for m in candidates}
    best_site = min(candidates, key=lambda m: (site[m], m))
    spread = _value(table, best_site, "site_balanced_accuracy_sd") or 0.0
    tied = sorted((m for m in candidates if site[m] <= site[best_site] + spread), key=lambda m: (site[m], m))
    mae = {m: _value(table, m, "cross_site_age_mae") for m in tied}
    if all(v is not None for v in mae.values()):
        chosen = min(tied, key=lambda m: (mae[m], site[m], m))
        why = (f"site predictability {site[chosen]:.3f} (lowest {site[best_site]:.3f} ± {spread:.3f}, by "
               f"{best_site})" + (f"; among the methods within one SD of it ({', '.join(tied)}) it has the "
                                  f"lowest cross-site age error, {mae[chosen]:.2f} y" if len(tied) > 1 else
                                  f", and no other method is within one SD of it; cross-site age error "
                                  f"{mae[chosen]:.2f} y"))
    else:
        chosen = best_site
        why = f"lowest site predictability, {site[chosen]:.3f} ± {spread:.3f} (cross-site age error not measured)"
    r = _value(table, chosen, "age_effect_r_vs_raw")
    if r is not None:
        why += f"; age effects kept (correlation with raw {r:.3f})"
    return {"method": chosen, "reason": why, "indistinguishable": tied, "excluded": excluded}


def _value(table: pd.DataFrame, method: str, column: str) -> float | None:
    if column not in table.columns:
        return None
    value = table.at[method, column]
    return float(value) if pd.notna(value) and np.isfinite(float(value)) else None
