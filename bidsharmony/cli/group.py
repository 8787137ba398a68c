"""Running the group level: collect features and covariates, harmonize, evaluate, report."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from ..utils.derivatives import derivative_bids_uri, software_versions
from ..utils.io import atomic_path, atomic_write_json

LOGGER = logging.getLogger("bidsharmony")


def write_table(table: pd.DataFrame, path: Path, meta: dict) -> Path:
    """Write a TSV and its JSON sidecar atomically."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="n/a")
    sidecar = path.with_name(path.name[: -len(".tsv")] + ".json")
    atomic_write_json(sidecar, {"SoftwareVersions": software_versions(), **meta})
    return path


def desc_label(method: str) -> str:
    """A BIDS ``desc`` label for a method name (``flow-scm`` → ``flowscm``)."""
    return "".join(c for c in method if c.isalnum())


def harmonizer_params(config, method: str) -> dict:
    """Constructor arguments of ``method`` from the command line."""
    params = {
        "reference_site": config.reference_site,
        "min_subjects_per_site": config.min_site_size,
        "random_seed": config.random_seed,
    }
    if method == "flow-scm":
        params.update(flow=config.flow, epochs=config.epochs, num_threads=config.omp_nthreads)
    elif method == "equivariant-pooling":
        params.update(num_threads=config.omp_nthreads)
    return params


def _table_name(config, desc: str) -> str:
    prefix = "" if config.features else f"atlas-{config.atlas_name}_"
    return f"{prefix}desc-{desc}_morph.tsv"


def _write_per_scan(config, group, harmonized, desc, meta) -> list[Path]:
    """Per-scan harmonized TSVs beside the participant level's ROI tables."""
    written = []
    for index, source in group.source_files.items():
        path = Path(source)
        out = path.with_name(path.name.replace("_desc-volume_morph.tsv", f"_desc-{desc}_morph.tsv"))
        row = pd.concat([group.ids.loc[[index]], harmonized.loc[[index]]], axis=1)
        sources = [derivative_bids_uri(path.relative_to(config.output_dir))]
        written.append(write_table(row, out, {**meta, "Sources": sources}))
    return written


def _fit_and_apply(config, group, out_dir: Path) -> list[Path]:
    from ..harmonize import get_harmonizer, load_harmonizer

    written = []
    if config.harmonizer_model:
        jobs = [(load_harmonizer(config.harmonizer_model), False)]
    else:
        jobs = [(get_harmonizer(m, **harmonizer_params(config, m)), True) for m in config.harmonizer]
    for harmonizer, fit in jobs:
        method = harmonizer.name
        started = time.monotonic()
        if fit:
            LOGGER.info("Fitting %s on %d scans × %d features", method, *group.features.shape)
            harmonized = harmonizer.fit_transform(group.features, group.covariates)
            model_dir = harmonizer.save(out_dir / "models" / method)
        else:
            LOGGER.info("Applying the saved %s model %s", method, config.harmonizer_model)
            model_dir = config.harmonizer_model
            unknown = sorted(set(group.covariates["site"]) - set(harmonizer.sites_))
            if config.adapt_new_site and unknown:
                LOGGER.info("Adapting %s to new site(s) %s, fitted weights frozen", method, ", ".join(unknown))
                harmonizer.adapt_new_sites(group.features, group.covariates, epochs=config.epochs)
                model_dir = harmonizer.save(out_dir / "models" / f"{method}-adapted")
            harmonized = harmonizer.transform(group.features, group.covariates)
        desc = desc_label(method)
        meta = {
            "Description": getattr(harmonizer, "output_description", None)
            or f"Features harmonized with {method} to the reference site",
            "Method": method,
            "ReferenceSite": getattr(harmonizer, "reference_site_", None) or harmonizer.reference_site,
            "Model": str(model_dir),
            "Parameters": harmonizer.get_params(),
            "RandomSeed": config.random_seed,
            "NotHarmonized": group.excluded,
        }
        log_likelihood = getattr(harmonizer, "training_log_likelihood_", None)
        if log_likelihood is not None:
            meta["TrainingLogLikelihood"] = log_likelihood
        table = pd.concat([group.ids, group.covariates.drop(columns=group.ids.columns, errors="ignore"), harmonized], axis=1)
        written.append(write_table(table, out_dir / _table_name(config, desc), meta))
        if group.source_files is not None:
            written += _write_per_scan(config, group, harmonized, desc, meta)
        LOGGER.info("%s done in %.0f s → %s (model: %s)", method, time.monotonic() - started, written[-1], model_dir)
    return written


def _evaluate(config, group, out_dir: Path) -> Path:
    from ..evaluation import evaluate_harmonizers
    from ..harmonize import get_harmonizer
    from ..reports.group import write_group_report

    # The evaluation compares harmonized features; pooling returns a representation instead.
    factories = {
        m: (lambda m=m: get_harmonizer(m, **harmonizer_params(config, m)))
        for m in config.harmonizer if m != "equivariant-pooling"
    }
    covariates = pd.concat([group.ids[["participant_id"]], group.covariates], axis=1)
    LOGGER.info("Evaluating %s leakage-safely (cross-validated; every fold refits)", ", ".join(factories))
    results = evaluate_harmonizers(
        group.features, covariates, factories, seed=config.random_seed,
        reference_site=config.reference_site, min_site_size=config.min_site_size,
        n_threads=config.omp_nthreads,
    )
    results.write_tables(out_dir / "evaluation")
    return write_group_report(results, out_dir)


def run_group(config) -> list[Path]:
    """Build the group table, harmonize it, and (``--evaluate``) compare the methods."""
    from ..workflows.group import load_group_data

    started = time.monotonic()
    group = load_group_data(config)
    out_dir = config.output_dir / "group"
    raw = pd.concat([group.ids, group.covariates.drop(columns=group.ids.columns, errors="ignore"), group.features], axis=1)
    written = [
        write_table(raw, out_dir / _table_name(config, "raw"), {
            "Description": "Features of every scan with covariates, before harmonization",
            "Sources": group.sources,
            "NotHarmonized": group.excluded,
        })
    ]
    sites = group.covariates["site"].value_counts().to_dict()
    LOGGER.info("Group table: %d scans from %d sites %s → %s", len(raw), len(sites), sites, written[0])
    if group.excluded:
        LOGGER.warning("Not harmonized (zero or constant in some scans): %s", ", ".join(group.excluded))
    if config.harmonizer or config.harmonizer_model:
        written += _fit_and_apply(config, group, out_dir)
    else:
        LOGGER.info("No --harmonizer given: wrote the collected table only.")
    if config.evaluate and config.harmonizer:
        written.append(_evaluate(config, group, out_dir))
    LOGGER.info(
        "Group level done in %.0f s. Written under %s: %s", time.monotonic() - started, out_dir,
        ", ".join(str(p.relative_to(out_dir)) for p in written if out_dir in p.parents),
    )
    return written
