"""Input checks shared by every harmonizer: one place, one wording.

Harmonizers take a feature table (one row per scan, one numeric column per feature, e.g. ROI
volumes in mm³) and a covariate table with the same index holding ``site``, ``age`` (years)
and ``sex``. The helpers here turn user tables into clean arrays or raise an error that names
the offending column/rows and the fix; they never repair data silently.

Sex codings
-----------
Accepted (case-insensitive, surrounding blanks ignored):

* ``M``/``F``, ``male``/``female``, ``man``/``woman`` (strings);
* numbers ``0``/``1`` read as 0 = female, 1 = male (UK Biobank);
* numbers ``1``/``2`` read as 1 = male, 2 = female (ADNI ``PTGENDER``, DICOM-style).

A numeric column that holds only ``1`` is ambiguous between the last two; ``fit`` resolves it
as ``0/1`` and records the resolved coding in the model so ``transform`` reads later tables the
same way. Any other code (``X``, ``other``, ``3``, blanks) raises :class:`CovariateError`
listing the values found and the accepted ones; pass an explicit mapping (``sex_coding``) to
read another coding. Internally sex is 0.0 (female) / 1.0 (male).
"""

from __future__ import annotations

import difflib
import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import (
    CovariateError,
    CovariateOverlapWarning,
    CovariateRangeWarning,
    FeatureError,
    FeatureOutlierWarning,
    FeatureMismatchError,
    NonPositiveOutputError,
    NotEnoughSubjectsError,
    UnknownSiteError,
)

SITE, AGE, SEX = "site", "age", "sex"
REQUIRED_COVARIATES = (SITE, AGE, SEX)
FEMALE, MALE = 0.0, 1.0

_STRING_SEX_CODES = {
    "m": MALE, "male": MALE, "man": MALE,
    "f": FEMALE, "female": FEMALE, "woman": FEMALE,
}
#: numeric codings recognised by ``sex_coding="auto"``, by name
NUMERIC_SEX_CODINGS = {
    "0/1": {0.0: FEMALE, 1.0: MALE},
    "1/2": {1.0: MALE, 2.0: FEMALE},
}
ACCEPTED_SEX_CODES_TEXT = "M/F, male/female, man/woman, 0/1 (0 = female), 1/2 (1 = male)"


def _preview(values, limit: int = 8) -> str:
    """Comma-separated preview of a few values for an error message."""
    values = list(values)
    text = ", ".join(repr(v) for v in values[:limit])
    return text + (f", ... ({len(values)} in all)" if len(values) > limit else "")


# ---------------------------------------------------------------------------------- sex
def _code_key(value) -> str:
    """Canonical text of a raw code, so that ``1``, ``1.0`` and ``"1"`` compare equal."""
    text = str(value).strip().lower()
    try:
        return str(float(text))
    except ValueError:
        return text


def resolve_sex_coding(values: pd.Series, coding="auto"):
    """Choose how the codes in ``values`` map to female/male.

    Parameters
    ----------
    values : pandas.Series
        The ``sex`` column as given by the user.
    coding : {"auto", "labels", "0/1", "1/2"} or mapping
        ``"auto"`` recognises strings and, for numbers, 0/1 or 1/2 (see module docstring).
        A mapping sends each raw code (compared as lower-case strings) to ``"M"`` or ``"F"``.

    Returns
    -------
    str or dict
        ``"labels"``, ``"0/1"``, ``"1/2"`` or a ``{code: "M"|"F"}`` mapping, to be stored with
        the model and passed back to :func:`normalize_sex` at transform time.
    """
    if isinstance(coding, Mapping):
        return {_code_key(k): str(v).strip().upper() for k, v in coding.items()}
    if coding in ("labels", "0/1", "1/2"):
        return coding
    if coding != "auto":
        raise CovariateError(
            f"sex_coding={coding!r} is not understood; use 'auto', 'labels', '0/1', '1/2' or a "
            "mapping such as {'1': 'F', '2': 'M'}"
        )
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        codes = set(numeric.astype(float).unique())
        if 2.0 in codes:
            return "1/2"
        return "0/1"
    return "labels"


def label_codes(values: pd.Series, missing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Factorize labels: ``(codes, labels)`` with ``labels[codes]`` the stripped text of each row.

    Labels repeat, so the text is cleaned once per distinct value. With ``missing`` (the
    default) a missing value gets code -1; otherwise it is a label of its own (``"nan"``).
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=missing)
    return codes, pd.Index(uniques, dtype=object).astype(str).str.strip().to_numpy(dtype=object)


def label_positions(codes: np.ndarray, labels, known: Sequence[str]) -> np.ndarray:
    """Position in ``known`` of each row's label ``labels[codes]`` (-1: not in it), looking up
    each distinct label once."""
    return pd.Index(known).get_indexer(np.asarray(labels, dtype=object))[codes]


def stripped_labels(values: pd.Series) -> pd.Series:
    """``values.astype(str).str.strip()``, computed once per distinct value (labels repeat)."""
    codes, labels = label_codes(values, missing=False)
    return pd.Series(labels[codes], index=values.index, dtype=object)


def site_labels(covariates: pd.DataFrame) -> np.ndarray:
    """The ``site`` column as stripped text, one object per row (how every module reads sites)."""
    return stripped_labels(covariates[SITE]).to_numpy(dtype=object)


def sex_numeric(values: pd.Series) -> np.ndarray:
    """Sex as 0.0 (female) / 1.0 (male), NaN where a code is not understood.

    The lenient reading for summaries and metrics, which report what they can read; a
    harmonizer refuses unknown codes instead (:func:`normalize_sex`). The codes are the same:
    the strings of the module docstring, numbers 1/2 (1 = male) when a 2 occurs, else 0/1
    (0 = female) — numbers are read even beside string labels.
    """
    labels = stripped_labels(values).str.lower().map(_STRING_SEX_CODES)
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().any():
        coding = NUMERIC_SEX_CODINGS["1/2" if (numbers == 2).any() else "0/1"]
        labels = labels.fillna(numbers.map(coding))
    return labels.to_numpy(dtype=np.float64)


def normalize_sex(values: pd.Series, coding="auto") -> np.ndarray:
    """Convert a ``sex`` column to 0.0 (female) / 1.0 (male).

    Parameters
    ----------
    values : pandas.Series
        Raw codes.
    coding : str or mapping
        As returned by :func:`resolve_sex_coding` (``"auto"`` resolves it first).

    Returns
    -------
    numpy.ndarray of float64

    Raises
    ------
    CovariateError
        For missing values or codes outside the coding, listing the values found and the
        accepted ones.
    """
    coding = resolve_sex_coding(values, coding)
    # codes repeat: read each distinct one once (string methods over every row are slow)
    positions, distinct = pd.factorize(values)
    if (positions < 0).any():
        rows = list(values.index[positions < 0])
        raise CovariateError(
            f"covariate 'sex' is missing for {len(rows)} row(s) ({_preview(rows)}); fill it in "
            f"({ACCEPTED_SEX_CODES_TEXT}) or drop those rows"
        )
    return _sex_of_codes(pd.Series(distinct, dtype=object), coding)[positions]


def _sex_of_codes(values: pd.Series, coding) -> np.ndarray:
    """:func:`normalize_sex` of distinct, non-missing codes under a resolved ``coding``."""
    if isinstance(coding, dict):
        table = {k: (MALE if v in ("M", "MALE") else FEMALE if v in ("F", "FEMALE") else None)
                 for k, v in coding.items()}
        if any(v is None for v in table.values()):
            raise CovariateError(f"sex_coding mapping {coding} must map every code to 'M' or 'F'")
        keys = values.map(_code_key)
        accepted = ", ".join(sorted(table)) + " (the sex_coding mapping)"
    else:
        # String labels (M/F, male/female) are unambiguous, so they are read under any coding;
        # bare numbers only under the numeric coding resolved at fit time.
        strings = stripped_labels(values).str.lower()
        mapped_labels = strings.map(_STRING_SEX_CODES)
        if coding == "labels":
            mapped_numbers = pd.Series(np.nan, index=values.index)
            accepted = ACCEPTED_SEX_CODES_TEXT
        else:
            numbers = pd.to_numeric(values, errors="coerce").astype(float)
            mapped_numbers = numbers.map(NUMERIC_SEX_CODINGS[coding])
            accepted = f"M/F, male/female, or {coding} (the numeric coding resolved at fit time)"
        table = None
        mapped = mapped_labels.fillna(mapped_numbers)
    if table is not None:
        mapped = keys.map(table)
    if mapped.isna().any():
        bad = sorted({str(v) for v in values[mapped.isna()]})
        found = sorted({str(v) for v in values})
        raise CovariateError(
            f"unknown sex code(s) {_preview(bad)} (values found: {_preview(found)}); accepted: "
            f"{accepted}; recode them or pass sex_coding={{'<code>': 'M'|'F', ...}}"
        )
    return mapped.to_numpy(dtype=np.float64)


# ------------------------------------------------------------------------------ tables
@dataclass
class PreparedData:
    """Validated inputs as arrays, in the model's feature order.

    Attributes
    ----------
    features : numpy.ndarray
        ``(n_rows, n_features)`` float64, columns in ``feature_names`` order.
    feature_names : list of str
        The model's feature order (the input order at fit time).
    input_columns : list of str
        The caller's column order, restored on output.
    index : pandas.Index
        The caller's row index, restored on output.
    site : numpy.ndarray
        Site labels as strings.
    age : numpy.ndarray
        Age in years, float64.
    sex : numpy.ndarray
        0.0 female / 1.0 male.
    extra : dict
        Further numeric covariates requested by the harmonizer, float64 arrays.
    site_factors : tuple, optional
        ``(codes, labels)`` with ``site == labels[codes]`` (:func:`site_codes`), kept so that
        :meth:`site_positions` looks up each distinct label once.
    """

    features: np.ndarray
    feature_names: list
    input_columns: list
    index: pd.Index
    site: np.ndarray
    age: np.ndarray
    sex: np.ndarray
    extra: dict = field(default_factory=dict)
    site_factors: tuple | None = field(default=None, repr=False)

    @property
    def n_rows(self) -> int:
        return self.features.shape[0]

    def site_positions(self, sites: Sequence[str]) -> np.ndarray:
        """Each row's position in ``sites`` (a model's site list), -1 for a site not in it."""
        codes, labels = self.site_factors if self.site_factors is not None else pd.factorize(self.site)
        return label_positions(codes, labels, sites)

    def in_label_order(self) -> "PreparedData":
        """The same rows sorted by their labels (as strings; labels are unique).

        Sums over rows (means, variances, least squares) round differently in another row
        order; a model fitted on the rows in label order is the same however the caller's
        table was sorted.
        """
        order = np.argsort(self.index.astype(str).to_numpy(), kind="stable")
        if np.array_equal(order, np.arange(self.n_rows)):
            return self
        factors = None
        if self.site_factors is not None:
            factors = (self.site_factors[0][order], self.site_factors[1])
        return replace(self, features=self.features[order], index=self.index[order], site=self.site[order],
                       age=self.age[order], sex=self.sex[order],
                       extra={k: np.asarray(v)[order] for k, v in self.extra.items()}, site_factors=factors)

    def to_frame(self, values: np.ndarray) -> pd.DataFrame:
        """Wrap a ``(n_rows, n_features)`` array in the caller's index and column order."""
        frame = pd.DataFrame(values, index=self.index, columns=self.feature_names)
        if list(self.input_columns) == list(self.feature_names):
            return frame  # selecting the same columns would copy every value
        return frame[self.input_columns]


def check_tables(features: pd.DataFrame, covariates: pd.DataFrame) -> None:
    """Check that both inputs are DataFrames describing the same rows."""
    if not isinstance(features, pd.DataFrame):
        raise FeatureError(
            f"features must be a pandas DataFrame (one row per scan, one column per feature), "
            f"got {type(features).__name__}"
        )
    if not isinstance(covariates, pd.DataFrame):
        raise CovariateError(
            f"covariates must be a pandas DataFrame with columns site, age, sex, got "
            f"{type(covariates).__name__}"
        )
    if len(features) == 0:
        raise FeatureError("the feature table has no rows")
    if features.shape[1] == 0:
        raise FeatureError("the feature table has no feature columns")
    if features.columns.duplicated().any():
        dup = sorted(set(features.columns[features.columns.duplicated()].astype(str)))
        raise FeatureError(f"duplicated feature column(s) {_preview(dup)}; make the names unique")
    if features.index.duplicated().any():
        dup = list(features.index[features.index.duplicated()])
        raise FeatureError(f"duplicated row labels in the feature table ({_preview(dup)}); "
                           "give every scan its own index label")
    if not features.index.equals(covariates.index):
        missing = features.index.difference(covariates.index)
        hint = (f"{len(missing)} feature row(s) have no covariates ({_preview(missing)})"
                if len(missing) else "the two tables list the rows in a different order")
        raise CovariateError(
            f"features and covariates must have the same index: {hint}; align them, e.g. "
            "covariates = covariates.loc[features.index]"
        )


def feature_array(features: pd.DataFrame, feature_names: Sequence[str] | None = None,
                  require_positive: bool = False) -> tuple[np.ndarray, list]:
    """Return the features as float64 in model order, checking names and values.

    Parameters
    ----------
    features : pandas.DataFrame
        The caller's table.
    feature_names : sequence of str, optional
        The model's features (at transform time). Columns may come in any order, but the set
        must match exactly.
    require_positive : bool
        Raise when a value is <= 0 (needed by log-transforming harmonizers).

    Returns
    -------
    values : numpy.ndarray
    names : list of str
        The model's feature order.
    """
    columns = [str(c) for c in features.columns]
    if feature_names is not None:
        expected = list(feature_names)
        present, fitted = set(columns), set(expected)  # hundreds of names: no list scans
        missing = [c for c in expected if c not in present]
        unexpected = [c for c in columns if c not in fitted]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing feature(s) {_preview(missing)}")
            if unexpected:
                parts.append(f"unexpected column(s) {_preview(unexpected)}")
            renames = []
            for name in unexpected:
                close = difflib.get_close_matches(name, missing, n=1)
                if close:
                    renames.append(f"{name!r} -> {close[0]!r}")
            fix = (f"rename {', '.join(renames)}" if renames else
                   "pass exactly the features the model was fitted on, or refit")
            raise FeatureMismatchError(f"{'; '.join(parts)} compared with the fitted model; {fix}")
        position = {name: j for j, name in enumerate(columns)}
        order = [position[c] for c in expected]
        frame = features if order == list(range(len(columns))) else features.iloc[:, order]
    else:
        expected = columns
        frame = features
    # judged once per distinct dtype (tables have hundreds of columns and one or two dtypes)
    numeric = {dtype: pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
               for dtype in set(frame.dtypes)}
    non_numeric = [str(c) for c, dtype in frame.dtypes.items() if not numeric[dtype]]
    if non_numeric:
        raise FeatureError(
            f"non-numeric feature column(s) {_preview(non_numeric)} ({_non_numeric_examples(frame, non_numeric)}); "
            "features must be numbers: correct those values, or drop the column(s) or move them to the "
            "covariate table (identifiers, covariates)"
        )
    values = frame.to_numpy(dtype=np.float64, copy=True)
    bad = ~np.isfinite(values)
    if bad.any():
        cols = [expected[j] for j in np.flatnonzero(bad.any(axis=0))]
        rows = list(frame.index[bad.any(axis=1)])
        raise FeatureError(
            f"{int(bad.sum())} NaN/infinite feature value(s) in column(s) {_preview(cols)} "
            f"(rows {_preview(rows)}); impute or drop those rows before harmonizing"
        )
    if require_positive and (values <= 0).any():
        bad = values <= 0
        cols = [expected[j] for j in np.flatnonzero(bad.any(axis=0))]
        raise FeatureError(
            f"{int(bad.sum())} feature value(s) <= 0 in column(s) {_preview(cols)} "
            f"({_cell_preview(bad, values, frame.index, expected)}): volumes must be positive (they are "
            "modelled on a log scale); correct or drop those rows (check the units), or, for features "
            "that are not volumes, set log_features=False (--harmonizer-param log_features=false)"
        )
    return values, expected


def _non_numeric_examples(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    """``column 'x' at row 'r': 'abc'`` for the first value of each column that is not a number."""
    examples = []
    for name in list(columns)[:3]:
        column = frame[name]
        if isinstance(column, pd.DataFrame):  # repeated column name
            column = column.iloc[:, 0]
        not_number = pd.to_numeric(column, errors="coerce").isna() & column.notna()
        if pd.api.types.is_bool_dtype(column.dtype) or not not_number.any():
            not_number = column.notna()
        if not_number.any():
            row = not_number.to_numpy().argmax()
            examples.append(f"{name!r} at row {column.index[row]!r}: {column.iloc[row]!r}")
    return "; ".join(examples) or "no values"


def _cell_preview(bad: np.ndarray, values: np.ndarray, index: pd.Index, names: Sequence[str],
                  limit: int = 5) -> str:
    """``column 'x' at row 'r' (value)`` for the first cells marked in ``bad``, row by row."""
    rows, cols = np.nonzero(bad)
    cells = [f"{names[j]!r} at row {index[i]!r} ({values[i, j]:.6g})" for i, j in zip(rows[:limit], cols[:limit])]
    more = f", ... ({len(rows)} in all)" if len(rows) > limit else ""
    return ", ".join(cells) + more


def positive_columns(values: np.ndarray, names: Sequence[str]) -> list:
    """Names of the columns of ``values`` whose every value is > 0: volumes, kept positive on output."""
    if values.size == 0:
        return []
    return [names[j] for j in np.flatnonzero((values > 0).all(axis=0))]


def check_positive_output(values: np.ndarray, names: Sequence[str], index: pd.Index, volumes: Sequence[str],
                          method: str, fix: str) -> None:
    """Refuse to return harmonized ``values`` that are <= 0 (or not finite) in a ``volumes`` column.

    A harmonizer must never write a non-positive volume: when its correction would, nothing is
    returned and the error names the cells and ``fix``.
    """
    wanted = set(volumes)
    columns = [j for j, name in enumerate(names) if name in wanted]
    if not columns:
        return
    bad = np.zeros(values.shape, dtype=bool)
    bad[:, columns] = ~(values[:, columns] > 0)  # NaN counts as not positive
    if not bad.any():
        return
    cols = [names[j] for j in np.flatnonzero(bad.any(axis=0))]
    raise NonPositiveOutputError(
        f"{method} would return {int(bad.sum())} volume(s) <= 0 in column(s) {_preview(cols)} "
        f"({_cell_preview(bad, values, index, names)}): its site correction exceeds these volumes, so "
        f"nothing was written; {fix}"
    )


def age_array(covariates: pd.DataFrame) -> np.ndarray:
    """Return ``age`` in years as float64; it must be numeric, finite and positive."""
    raw = covariates[AGE]
    numeric = pd.to_numeric(raw, errors="coerce")
    bad = numeric.isna() | ~np.isfinite(numeric.astype(float))
    if bad.any():
        rows = list(covariates.index[bad])
        values = sorted({str(v) for v in raw[bad]})
        raise CovariateError(
            f"covariate 'age' is missing or not a number for {int(bad.sum())} row(s) "
            f"({_preview(rows)}; values {_preview(values)}); give age in years as a number"
        )
    values = numeric.to_numpy(dtype=np.float64)
    if (values <= 0).any():
        rows = list(covariates.index[values <= 0])
        raise CovariateError(f"covariate 'age' must be positive (years); rows {_preview(rows)} are <= 0")
    return values


def site_array(covariates: pd.DataFrame, known_sites: Sequence[str] | None = None,
               unknown_site_hint: str | None = None) -> np.ndarray:
    """Return ``site`` as strings; at transform time every site must be a fitted one.

    ``unknown_site_hint`` adds a method-specific way out to the unknown-site error (e.g. the
    flow-SCM's site adaptation).
    """
    codes, labels = site_codes(covariates, known_sites, unknown_site_hint)
    return labels[codes]


def site_codes(covariates: pd.DataFrame, known_sites: Sequence[str] | None = None,
               unknown_site_hint: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`site_array` factorized, as ``(codes, labels)`` (see :func:`label_codes`)."""
    codes, labels = label_codes(covariates[SITE])
    if (codes < 0).any():
        rows = list(covariates.index[codes < 0])
        raise CovariateError(f"covariate 'site' is missing for row(s) {_preview(rows)}")
    if known_sites is not None:
        unknown = sorted(set(labels) - set(known_sites))
        if unknown:
            raise UnknownSiteError(
                f"site(s) {_preview(unknown)} were not seen when the model was fitted (known "
                f"sites: {_preview(known_sites, limit=20)}); fix the site labels, or refit the "
                "model including those sites" + (f", or {unknown_site_hint}" if unknown_site_hint else "")
            )
    return codes, labels


def covariate_columns_present(covariates: pd.DataFrame, extra: Sequence[str] = ()) -> None:
    """Raise if ``site``, ``age``, ``sex`` or a requested extra covariate is absent."""
    columns = [str(c) for c in covariates.columns]
    missing = [c for c in (*REQUIRED_COVARIATES, *extra) if c not in columns]
    if missing:
        hints = []
        for name in missing:
            close = difflib.get_close_matches(name, [c.lower() for c in columns], n=1, cutoff=0.6)
            if close:
                original = next(c for c in columns if c.lower() == close[0])
                hints.append(f"{original!r} -> {name!r}")
        fix = f"rename {', '.join(hints)}" if hints else "add them"
        raise CovariateError(
            f"covariate column(s) {_preview(missing)} missing (found {_preview(columns)}); {fix}"
        )


def extra_array(covariates: pd.DataFrame, name: str) -> np.ndarray:
    """Return an extra numeric covariate as finite float64."""
    numeric = pd.to_numeric(covariates[name], errors="coerce")
    bad = numeric.isna() | ~np.isfinite(numeric.astype(float))
    if bad.any():
        rows = list(covariates.index[bad])
        raise CovariateError(
            f"covariate {name!r} is missing or not a number for row(s) {_preview(rows)}"
        )
    return numeric.to_numpy(dtype=np.float64)


def prepare(features: pd.DataFrame, covariates: pd.DataFrame, *, feature_names=None,
            known_sites=None, sex_coding="auto", extra_covariates: Sequence[str] = (),
            require_positive: bool = False, unknown_site_hint: str | None = None) -> PreparedData:
    """Validate both tables and return :class:`PreparedData`.

    Parameters
    ----------
    features, covariates : pandas.DataFrame
        Same index; covariates hold ``site``, ``age``, ``sex`` and ``extra_covariates``.
    feature_names : sequence of str, optional
        Fitted features (transform time); ``None`` at fit time.
    known_sites : sequence of str, optional
        Fitted sites (transform time).
    sex_coding : str or mapping
        See :func:`resolve_sex_coding`.
    extra_covariates : sequence of str
        Further numeric covariates the harmonizer uses.
    require_positive : bool
        Features must be > 0 (log transform).
    unknown_site_hint : str, optional
        Extra advice in the error for sites not in ``known_sites``.
    """
    check_tables(features, covariates)
    covariate_columns_present(covariates, extra_covariates)
    values, names = feature_array(features, feature_names, require_positive=require_positive)
    codes, labels = site_codes(covariates, known_sites, unknown_site_hint)
    return PreparedData(
        features=values,
        feature_names=names,
        input_columns=list(features.columns),
        index=features.index,
        site=labels[codes],
        site_factors=(codes, labels),
        age=age_array(covariates),
        sex=normalize_sex(covariates[SEX], sex_coding),
        extra={name: extra_array(covariates, name) for name in extra_covariates},
    )


#: a model refuses data whose typical feature magnitude differs from the fit's by this factor
MAX_SCALE_RATIO = 3.0


def check_feature_units(features: pd.DataFrame, fitted_units: dict) -> None:
    """Refuse features whose declared units (``attrs["units"]``) differ from the model's."""
    units = features.attrs.get("units")
    if not isinstance(units, dict) or not fitted_units:
        return
    differ = [f"{name} ({units[name]} vs {fitted})" for name, fitted in fitted_units.items()
              if name in units and str(units[name]) != str(fitted)]
    if differ:
        raise FeatureError(
            f"feature units differ from those the model was fitted on: {_preview(differ, limit=3)}; "
            "convert the features to the model's units"
        )


_SCALE_CHECK_ROWS = 250


def check_feature_scale(data: PreparedData, fitted_medians: dict) -> None:
    """Refuse features whose typical magnitude is far from the fit's: other units.

    A unit mix-up (cm³ for mm³, voxel counts for mm³) multiplies *every* feature by one
    factor, while biology and site move features differently and by far less. So the median,
    over features, of log(median now / median at fit) is compared with
    :data:`MAX_SCALE_RATIO`; a few features far off (e.g. ventricles of an old cohort) do not
    trigger it. Features with a non-positive median (centred or log data) are not compared.
    """
    names = [n for n in data.feature_names if fitted_medians.get(n, 0.0) > 0]
    if not names:
        return
    # a unit factor (>= 3x) shows in the medians of a few hundred rows; more only costs time
    step = max(1, data.n_rows // _SCALE_CHECK_ROWS)
    position = {name: j for j, name in enumerate(data.feature_names)}
    columns = [position[n] for n in names]
    # medians along contiguous rows (a transposed copy): ~3x faster than along strided columns
    now = np.median(np.ascontiguousarray(data.features[::step][:, columns].T), axis=1)
    before = np.array([fitted_medians[n] for n in names])
    usable = now > 0
    if not usable.any():
        return
    ratio = float(np.exp(np.median(np.log(now[usable] / before[usable]))))
    if ratio > MAX_SCALE_RATIO or ratio < 1.0 / MAX_SCALE_RATIO:
        raise FeatureError(
            f"the features are typically {ratio:.3g} times the values the model was fitted on "
            f"(e.g. {names[0]}: median {now[0]:.4g}, at fit {before[0]:.4g}): different units "
            "(e.g. cm3 vs mm3, voxel counts vs mm3)? convert them to the model's units, or refit"
        )


# ------------------------------------------------------------------------ fit-time checks
def check_site_sizes(sites: np.ndarray, min_subjects_per_site: int) -> dict:
    """Return ``{site: count}``; raise if a site has fewer than ``min_subjects_per_site`` rows."""
    labels, counts = np.unique(sites.astype(str), return_counts=True)
    sizes = {str(k): int(v) for k, v in zip(labels, counts)}
    small = {k: v for k, v in sizes.items() if v < min_subjects_per_site}
    if small:
        listed = ", ".join(f"{k} ({v})" for k, v in small.items())
        raise NotEnoughSubjectsError(
            f"site(s) {listed} have fewer than {min_subjects_per_site} scans, too few to estimate "
            "site effects; merge or drop them, or lower min_subjects_per_site (--min-site-size)"
        )
    if len(sizes) < 2:
        raise NotEnoughSubjectsError(
            f"only one site ({_preview(sizes)}) in the data: harmonization needs at least two"
        )
    return sizes


def check_residual_df(method: str, n_scans: int, design_columns: int, terms: str) -> None:
    """Raise unless a linear model of ``design_columns`` leaves residual degrees of freedom.

    With as many scans as design columns the fit is exact: the pooled variance the ComBat family
    divides by is rounding noise, and its "harmonized" volumes would be that noise magnified.
    """
    if n_scans - design_columns < 1:
        raise NotEnoughSubjectsError(
            f"{method}: {n_scans} scans are too few for a design of {design_columns} columns ({terms}): "
            "the residuals that estimate the pooled variance would be (near) zero; it needs at least "
            f"{design_columns + 1} scans — add scans, merge small sites or drop covariates"
        )


def covariate_summary(data: PreparedData) -> dict:
    """Ranges of the covariates seen in fit, overall and per site (stored in the manifest)."""
    summary = {"age": {"min": float(data.age.min()), "max": float(data.age.max()),
                       "mean": float(data.age.mean()), "by_site": {}},
               "sex": {"n_female": int((data.sex == FEMALE).sum()),
                       "n_male": int((data.sex == MALE).sum()), "by_site": {}},
               "extra": {}}
    for site in sorted(set(data.site)):
        mask = data.site == site
        summary["age"]["by_site"][site] = [float(data.age[mask].min()), float(data.age[mask].max())]
        summary["sex"]["by_site"][site] = {"n_female": int((data.sex[mask] == FEMALE).sum()),
                                           "n_male": int((data.sex[mask] == MALE).sum())}
    for name, values in data.extra.items():
        summary["extra"][name] = {"min": float(values.min()), "max": float(values.max())}
    return summary


def warn_on_poor_overlap(data: PreparedData, reference_site: str | None = None,
                         min_overlap_fraction: float = 0.5) -> list:
    """Warn when a site's age range barely overlaps the reference (or pooled) range, or a site
    holds one sex only.

    Harmonization learns site effects where sites overlap; outside that support every method
    extrapolates (ComBat linearly, flows through their context network). Returns the messages.
    """
    messages = []
    sites = sorted(set(data.site))
    if reference_site is not None:
        ref_mask = data.site == reference_site
        ref_lo, ref_hi = data.age[ref_mask].min(), data.age[ref_mask].max()
        target = f"reference site {reference_site!r}"
    for site in sites:
        mask = data.site == site
        lo, hi = data.age[mask].min(), data.age[mask].max()
        if reference_site is None:
            others = data.age[~mask]
            ref_lo, ref_hi = others.min(), others.max()
            target = "the other sites"
        if site == reference_site:
            continue
        overlap = max(0.0, min(hi, ref_hi) - max(lo, ref_lo))
        width = max(hi - lo, 1e-9)
        if overlap / width < min_overlap_fraction:
            messages.append(
                f"site {site!r} ages {lo:.1f}-{hi:.1f} overlap {target} ({ref_lo:.1f}-{ref_hi:.1f}) "
                f"for only {100 * overlap / width:.0f}% of their range: its site effect is "
                "extrapolated there"
            )
        sexes = set(data.sex[mask])
        if len(sexes) < 2:
            messages.append(f"site {site!r} has scans of one sex only: sex and site effects are confounded")
    for message in messages:
        warnings.warn(message, CovariateOverlapWarning, stacklevel=3)
    return messages


#: robust z-score (deviation from the site median / pooled 1.4826 MAD) beyond which a scan's
#: feature is reported; on FCON1000 (974 scans x 53 volumes) 10 cells in 7 scans pass 6, among
#: them Bangor brain masks of 4.3-5.3 L (that site's median 1.8 L) and a cut-off cerebellum
OUTLIER_Z = 6.0


def warn_on_outlying_features(data: PreparedData, threshold: float = OUTLIER_Z, limit: int = 8) -> list:
    """Warn about scans with a feature implausibly far from their site's other scans.

    Each feature (its log when positive in every scan: volumes) is compared with the median of
    its site; the deviation is scaled by the pooled median absolute deviation over all sites
    (x 1.4826, the SD of normal data), so a site whose scans all differ is not flagged, a
    single failed segmentation is. Such scans are not dropped: they enter the fit like any
    other and can pull their site's estimated effects, so the message names them for QC.

    Returns
    -------
    list of (row label, feature, robust z), largest |z| first.
    """
    values = data.features
    if values.shape[0] < 3:
        return []
    positive = np.all(values > 0, axis=0)
    scaled = np.where(positive, np.log(np.where(positive, values, 1.0)), values)
    deviation = np.empty_like(scaled)
    for site in set(data.site):
        rows = data.site == site
        deviation[rows] = scaled[rows] - np.median(scaled[rows], axis=0)
    spread = 1.4826 * np.median(np.abs(deviation), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(spread > 0, deviation / spread, 0.0)
    rows, columns = np.nonzero(np.abs(z) > threshold)
    found = sorted(((str(data.index[r]), data.feature_names[c], float(z[r, c])) for r, c in zip(rows, columns)),
                   key=lambda item: -abs(item[2]))
    if found:
        scans = len({label for label, _, _ in found})
        shown = "; ".join(f"{label} {name} (z {value:+.1f})" for label, name, value in found[:limit])
        more = f"; and {len(found) - limit} more" if len(found) > limit else ""
        warnings.warn(
            f"{scans} scan(s) hold a feature more than {threshold:g} robust SDs from their site's "
            f"median (a failed segmentation or brain mask?): {shown}{more}. They are fitted and "
            "harmonized like the others and can bias their site's estimated effect: check them "
            "and drop or fix the failures",
            FeatureOutlierWarning, stacklevel=3)
    return found


def warn_outside_fitted_range(age: np.ndarray, fitted_min: float, fitted_max: float,
                              what: str = "age", action: str = "extrapolated") -> int:
    """Warn (once per call) when values fall outside ``[fitted_min, fitted_max]``; return the count."""
    outside = int(((age < fitted_min) | (age > fitted_max)).sum())
    if outside:
        warnings.warn(
            f"{outside} row(s) have {what} outside the range seen in fit "
            f"({fitted_min:.4g}-{fitted_max:.4g}, given {np.min(age):.4g}-{np.max(age):.4g}); "
            f"their harmonization is {action}",
            CovariateRangeWarning, stacklevel=3,
        )
    return outside


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """Return ``value`` as int if it is an integer >= ``minimum``; raise otherwise."""
    from .errors import HarmonizerParameterError

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise HarmonizerParameterError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_fraction(name: str, value, low: float = 0.0, high: float = 1.0) -> float:
    """Return ``value`` as float in ``[low, high)``; raise otherwise."""
    from .errors import HarmonizerParameterError

    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (low <= number < high):
        raise HarmonizerParameterError(f"{name} must be a number in [{low}, {high}), got {value!r}")
    return number
