"""The group level, top to bottom: collect, harmonize, write, evaluate, report.

:func:`run_group` reads the run's settings (:class:`~bidsharmony.config.Config`) and goes down
the layers once: the inputs are collected (:mod:`.group` for the ROI tables, :mod:`.group_images`
for the template-space images), each chosen harmonizer (:mod:`bidsharmony.harmonize.registry`)
is fitted — or a saved model loaded — and applied, the derivatives are written
(:mod:`.group_outputs`), and with ``--evaluate`` the table methods are compared leakage-safely
(:mod:`bidsharmony.evaluation`) and reported (:mod:`bidsharmony.reports.group`). The command
line (:mod:`bidsharmony.cli.group`) only checks the options and calls it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from ..harmonize import registry
from ..utils.derivatives import derivative_bids_uri
from ..utils.io import atomic_path
from .group_outputs import desc_label, model_reference, table_name, write_image, write_per_scan, write_table

LOGGER = logging.getLogger("bidsharmony")


#: run settings given to every harmonizer whose constructor takes them: parameter <- config field
#: (a method's own flags, e.g. flow-scm's --flow and --epochs, are declared in its registry entry)
RUN_SETTINGS = {
    "reference_site": "reference_site",
    "min_subjects_per_site": "min_site_size",
    "random_seed": "random_seed",
    "num_threads": "omp_nthreads",
}


def harmonizer_params(config, method: str) -> dict:
    """Constructor arguments of harmonizer ``method`` (table or image) from the command line.

    Each run setting and ``--harmonizer-param`` reaches the methods whose constructor takes it,
    ``--protect`` those that keep extra covariates.
    """
    accepted = registry.parameters(method)
    settings = {**RUN_SETTINGS, **registry.method(method).settings}
    params = {name: getattr(config, field) for name, field in settings.items() if name in accepted}
    if config.protect and "extra_covariates" in accepted:
        params["extra_covariates"] = list(config.protect)
    params.update({k: v for k, v in config.harmonizer_params.items() if k in accepted})
    return params


def run_group(config) -> list[Path]:
    """Build the group table, harmonize it, and (``--evaluate``) compare the methods.

    Feature harmonizers work on the ROI tables; image harmonizers (and a saved image model)
    on the template-space images, independently.
    """
    from ..harmonize.base import model_format
    from ..harmonize.image_base import IMAGE_FORMAT_NAME

    started = time.monotonic()
    out_dir = config.output_dir / "group"
    image_methods = [m for m in config.harmonizer if registry.method(m).kind == registry.IMAGE]
    image_model = bool(config.harmonizer_model) and model_format(config.harmonizer_model) == IMAGE_FORMAT_NAME
    feature_methods = [m for m in config.harmonizer if registry.method(m).kind == registry.TABLE]
    written = []
    if feature_methods or not (image_methods or image_model):
        written += _run_features(config, feature_methods, out_dir)
    if image_methods or image_model:
        written += _harmonize_images(config, image_methods, out_dir)
    LOGGER.info("Group level done in %.0f s. %s", time.monotonic() - started, _summary(written, config.output_dir))
    return written


def _summary(paths: list[Path], output_dir: Path) -> str:
    """What was written where: group files by name, per-scan files counted by kind."""
    per_scan = [p for p in paths if p.parent.name in ("anat", "figures")]
    group = [str(p.relative_to(output_dir)) for p in paths if p not in per_scan]
    kinds = pd.Series([f"{p.parent.name}/*_desc-{p.name.split('_desc-')[-1]}" for p in per_scan]).value_counts()
    parts = [f"Written under {output_dir}: {', '.join(group) or 'no group files'}"]
    parts += [f"{n} per-scan files {kind}" for kind, n in kinds.items()]
    return "; ".join(parts)


def _run_features(config, methods: list[str], out_dir: Path) -> list[Path]:
    from .group import load_group_data

    # made before the data is read: a bad parameter or model fails at once, and the table is
    # checked for what the chosen methods need (volumes > 0 for those modelling log-volumes)
    jobs = _feature_jobs(config, methods) if methods or config.harmonizer_model else []
    group = load_group_data(config, require_positive=any(h._requires_positive_features for h, _ in jobs))
    raw = pd.concat([group.ids, group.covariates.drop(columns=group.ids.columns, errors="ignore"), group.features], axis=1)
    written = [
        write_table(raw, out_dir / table_name(config, "raw"), {
            "Description": "Features of every scan with covariates, before harmonization",
            "Sources": group.sources,
            "NotHarmonized": group.excluded,
            **({"ProtectedCovariates": group.protected} if group.protected else {}),
        })
    ]
    sites = group.covariates["site"].value_counts().to_dict()
    LOGGER.info("Group table: %d scans from %d sites %s → %s", len(raw), len(sites), sites, written[0])
    if group.excluded:
        LOGGER.warning("Not harmonized (zero or constant in some scans): %s", ", ".join(group.excluded))
    if jobs:
        written += _fit_and_apply(config, jobs, group, out_dir)
    else:
        LOGGER.info("No --harmonizer given: wrote the collected table only.")
    if config.evaluate and methods:
        written.append(_evaluate(config, methods, group, out_dir))
    return written


def _feature_jobs(config, methods) -> list[tuple[object, bool]]:
    """``(harmonizer, fit)`` of each feature method (unfitted), or of the saved model (fitted)."""
    from ..harmonize import get_harmonizer, load_harmonizer

    if config.harmonizer_model:
        return [(load_harmonizer(config.harmonizer_model), False)]
    return [(get_harmonizer(m, **harmonizer_params(config, m)), True) for m in methods]


def _fit_and_apply(config, jobs, group, out_dir: Path) -> list[Path]:
    written = []
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
            "Model": model_reference(config, model_dir),
            "Parameters": harmonizer.get_params(),
            "RandomSeed": config.random_seed,
            "NotHarmonized": group.excluded,
        }
        if group.protected:
            meta["ProtectedCovariates"] = group.protected
        log_likelihood = getattr(harmonizer, "training_log_likelihood_", None)
        if log_likelihood is not None:
            meta["TrainingLogLikelihood"] = log_likelihood
        table = pd.concat([group.ids, group.covariates.drop(columns=group.ids.columns, errors="ignore"), harmonized], axis=1)
        written.append(write_table(table, out_dir / table_name(config, desc), meta))
        if group.source_files is not None:
            written += write_per_scan(config, group, harmonized, desc, meta)
        LOGGER.info("%s done in %.0f s → %s (model: %s)", method, time.monotonic() - started, written[-1], model_dir)
    return written


def _evaluate(config, methods, group, out_dir: Path) -> Path:
    from ..evaluation import evaluate_harmonizers
    from ..harmonize import get_harmonizer
    from ..reports.group import write_group_report

    # The evaluation compares harmonized features; a representation (pooling) is not one.
    factories = {
        m: (lambda m=m: get_harmonizer(m, **harmonizer_params(config, m)))
        for m in methods if registry.method(m).output == registry.FEATURES
    }
    covariates = pd.concat([group.ids[["participant_id"]], group.covariates], axis=1)
    LOGGER.info("Evaluating %s leakage-safely (cross-validated, %d repeats; every fold refits)",
                ", ".join(factories), config.evaluate_repeats)
    results = evaluate_harmonizers(
        group.features, covariates, factories, seed=config.random_seed,
        reference_site=config.reference_site, min_site_size=config.min_site_size,
        n_threads=config.omp_nthreads, n_repeats=config.evaluate_repeats,
    )
    results.write_tables(out_dir / "evaluation")
    pick = results.recommendation
    LOGGER.info("Evaluation: %s", f"{pick['method']} recommended ({pick['reason']})" if pick.get("method")
                else f"no method recommended ({pick.get('reason')})")
    return write_group_report(results, out_dir, protected=group.protected)


def _harmonize_images(config, methods: list[str], out_dir: Path) -> list[Path]:
    """Fit (or load) each image harmonizer, then map every template-space scan to the reference site."""
    import nibabel as nb
    import numpy as np

    from ..harmonize.image_base import ImageHarmonizer, get_image_harmonizer
    from ..reports.images import ImageHarmonizationSummary
    from .group_images import load_group_images

    group = load_group_images(config)
    scans = group.scans
    like = nb.load(group.images[0])
    LOGGER.info("Image harmonization: %d template-space scans (%s) from sites %s", len(scans),
                "×".join(map(str, scans.shape)), pd.Series(scans.sites).value_counts().to_dict())
    if config.harmonizer_model:
        jobs = [(ImageHarmonizer.load(config.harmonizer_model), config.harmonizer_model)]
    else:
        jobs = [(get_image_harmonizer(m, **harmonizer_params(config, m)), None) for m in methods]
    written = []
    for harmonizer, model_dir in jobs:
        started = time.monotonic()
        if model_dir is None:
            LOGGER.info("Fitting %s (progress below; fit time grows with epochs and slice size)", harmonizer.name)
            harmonizer.fit(scans)
            model_dir = harmonizer.save(out_dir / "models" / harmonizer.name)
        meta = {
            "Description": f"T1w in template space harmonized with {harmonizer.name} to the reference site",
            "Method": harmonizer.name,
            "ReferenceSite": harmonizer.reference_site_,
            "Model": model_reference(config, model_dir),
            "Parameters": harmonizer.get_params(),
            "RandomSeed": config.random_seed,
        }
        labels = [p.name.split("_space-")[0] for p in group.images]
        # a saved model applied to new scans may see none of its reference site: nothing to compare to
        summary = (ImageHarmonizationSummary(scans, harmonizer.name, harmonizer.reference_site_, labels=labels)
                   if str(harmonizer.reference_site_) in set(map(str, scans.sites)) else None)
        done, sites, transform_started = 0, sorted(set(scans.sites)), time.monotonic()
        for site in sites:
            rows = np.flatnonzero(np.asarray(scans.sites) == site)
            # A whole site at once: methods that adapt per site (harmonizing-flows) see all its scans.
            results = harmonizer.transform(scans.subset(rows))
            for row, (image, info) in zip(rows, results):
                if summary is not None:
                    summary.add(row, image)
                source, mask = group.images[row], group.masks[row]
                out = source.with_name(source.name.replace("_desc-preproc_T1w", f"_desc-{harmonizer.desc}_T1w"))
                sources = [derivative_bids_uri(p.relative_to(config.output_dir)) for p in (source, mask)]
                written.append(write_image(image, like, out, {**meta, "Sources": sources, "Site": site,
                                                              "Harmonization": info}))
            done += len(rows)
            elapsed = time.monotonic() - transform_started
            LOGGER.info("%s: %d/%d scans harmonized (site %s done) in %.0f s, about %.0f s left",
                        harmonizer.name, done, len(scans), site, elapsed, elapsed / done * (len(scans) - done))
        if summary is not None:
            written += _write_image_summary(config, summary, harmonizer, group, meta, out_dir)
        else:
            LOGGER.info("%s: no scan of the reference site %s among these scans, so no before/after comparison",
                        harmonizer.name, harmonizer.reference_site_)
        if config.counterfactual and registry.method(harmonizer.name).counterfactuals:
            written += _draw_counterfactuals(config, harmonizer, group, out_dir / "figures")
        LOGGER.info("%s done in %.0f s → %d images (*_desc-%s_T1w.nii.gz), model %s", harmonizer.name,
                    time.monotonic() - started, len(scans), harmonizer.desc, model_dir)
    return written


def _write_image_summary(config, summary, harmonizer, group, meta: dict, out_dir: Path) -> list[Path]:
    """The per-scan before/after table (with its sidecar) and the HTML page of one image method."""
    table = write_table(summary.per_scan(), out_dir / f"desc-{harmonizer.desc}_imagestats.tsv", {
        **{k: meta[k] for k in ("Method", "ReferenceSite", "Model", "RandomSeed")},
        "Description": "Per scan: distance of the brain intensity distribution to the reference site's "
                       "(1-Wasserstein, in units of the reference's interquartile range) and the median brain "
                       "intensity, before and after harmonization",
        "Sources": [derivative_bids_uri(p.relative_to(config.output_dir)) for p in (*group.images, *group.masks)],
    })
    page = summary.write_report(out_dir)
    per_site = summary.per_site()
    moved = per_site[per_site["site"] != str(harmonizer.reference_site_)]
    if len(moved):
        LOGGER.info("%s: distance of the other sites' brain intensities to the reference %.3f before, %.3f after "
                    "(report: %s)", harmonizer.name, moved["distance_before"].mean(), moved["distance_after"].mean(),
                    page)
    return [table, page]


def _draw_counterfactuals(config, harmonizer, group, figures: Path) -> list[Path]:
    """One Fig. 5-like PNG per scan: do(site=reference) and each ``--counterfactual`` intervention."""
    from ..images.deepscm_image import plot_counterfactuals

    scans, written = group.scans, []
    interventions = {f"do(site={harmonizer.reference_site_})": {"site": harmonizer.reference_site_}}
    interventions.update({f"do({node}={value})": {node: value} for node, value in config.counterfactual.items()})
    for k, (_, row) in enumerate(scans.covariates.iterrows()):
        results = {label: harmonizer.counterfactual(scans.images[k], scans.masks[k], row.to_dict(), do)
                   for label, do in interventions.items()}
        stem = group.images[k].name.split("_space-")[0]
        path = figures / f"{stem}_desc-deepscm_counterfactuals.png"
        with atomic_path(path) as tmp:
            plot_counterfactuals(results, tmp)
        written.append(path)
    LOGGER.info("Counterfactual figures (%s) of %d scans in %s", ", ".join(interventions), len(scans), figures)
    return written
