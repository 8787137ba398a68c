"""Running the participant level: select, pre-flight check, build, execute, report."""

from __future__ import annotations

import getpass
import logging
import os
import time
from pathlib import Path

from ..errors import BidsharmonyError, QualityCheckError

LOGGER = logging.getLogger("bidsharmony")


def plugin_settings(config) -> dict:
    """Nipype ``run()`` arguments: ``--use-plugin`` YAML, else MultiProc with our limits."""
    if config.use_plugin:
        import yaml

        try:
            settings = yaml.safe_load(Path(config.use_plugin).read_text()) or {}
        except yaml.YAMLError as err:
            raise BidsharmonyError(f"--use-plugin {config.use_plugin} is not valid YAML: {err}") from None
        if "plugin" not in settings:
            raise BidsharmonyError(
                f"--use-plugin {config.use_plugin} names no 'plugin' (e.g. 'plugin: SLURMGraph')"
            )
        return {"plugin": settings["plugin"], "plugin_args": settings.get("plugin_args", {})}
    if config.nprocs == 1:
        return {"plugin": "Linear"}
    plugin_args = {"n_procs": config.nprocs, "raise_insufficient": False}
    if config.mem_gb:
        plugin_args["memory_gb"] = config.mem_gb
    return {"plugin": "MultiProc", "plugin_args": plugin_args}


def _last_error_line(text: str) -> str:
    """The final ``Error: message`` line of a traceback Nipype folded into its exception."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and line.strip() not in (")", "(")]
    for line in reversed(lines):
        if "Error" in line.split(":")[0] or "Exception" in line.split(":")[0]:
            return line
    return lines[-1] if lines else "unknown error"


def run_participant(config) -> list[Path]:
    """Preprocess the selected T1w images; return the ROI tables written."""
    from nipype import config as nipype_config

    from ..interfaces.images import validate_t1w
    from ..reports.participant import mask_quality, write_subject_reports
    from ..templates import template_inputs
    from ..utils.bids import load_layout, select_t1w
    from ..utils.derivatives import parse_entities, write_bidsignore, write_dataset_description
    from ..utils.progress import SubjectProgress
    from ..workflows.base import SLURM_PLUGINS, init_bidsharmony_wf, set_batch_resources

    layout = load_layout(config.bids_dir)
    t1w_files = select_t1w(layout, config.participant_label, config.session_label, config.bids_filters)
    for path in t1w_files:  # fail before any work starts, naming the file
        validate_t1w(path)
    inputs, atlas_meta = template_inputs(config.template, config.template_resolution, config.atlas)

    write_dataset_description(config.output_dir, config.bids_dir)
    write_bidsignore(config.output_dir)
    nipype_config.update_config({
        "execution": {
            "crashdump_dir": str(config.output_dir / "logs"),
            "crashfile_format": "txt",
            "remove_unnecessary_outputs": False,
            "hash_method": "content",
            # The graph report (index.html, graph1.json) sits in the shared work folder and
            # would be rewritten by every array task at once; nothing reads it.
            "create_report": False,
        },
        "monitoring": {"enabled": False},
    })
    workflow = init_bidsharmony_wf(
        config=config, t1w_files=t1w_files, template_inputs=inputs, atlas_meta=atlas_meta
    )
    subjects = sorted({parse_entities(p)["sub"] for p in t1w_files})
    LOGGER.info(
        "Participant level: %d T1w image(s) of %d subject(s) → %s (work dir %s)",
        len(t1w_files), len(subjects), config.output_dir, config.work_dir,
    )
    started, started_wall = time.monotonic(), time.time() - 1
    settings = plugin_settings(config)
    if settings["plugin"] in ("Linear", "MultiProc"):
        settings.setdefault("plugin_args", {})["status_callback"] = SubjectProgress(workflow, LOGGER)
    if settings["plugin"] in SLURM_PLUGINS:
        os.environ.setdefault("LOGNAME", getpass.getuser())  # Nipype's SLURM plugin names jobs after it
        sized = set_batch_resources(workflow, settings["plugin"])
        LOGGER.info("%s plugin: %d node(s) run as sbatch jobs sized from their CPU/memory estimates", settings["plugin"], sized)
    try:
        workflow.run(**settings)
    except RuntimeError as err:
        # Only this run's crash files: other array tasks write theirs into the same folder.
        crashes = sorted(
            (p for p in (config.output_dir / "logs").glob("crash-*") if p.stat().st_mtime >= started_wall),
            key=lambda p: p.stat().st_mtime,
        )
        where = f"; full report in {crashes[-1]}" if crashes else ""
        raise BidsharmonyError(f"the participant workflow failed: {_last_error_line(str(err))}{where}") from None
    if settings["plugin"].endswith("Graph"):  # graph plugins submit every job and return at once
        LOGGER.info(
            "Participant level submitted through %s; once its jobs finish, re-run the same command "
            "without --use-plugin to write the reports (every step is cached)", settings["plugin"],
        )
        return []

    reports = write_subject_reports(config, subjects)
    tables = sorted(config.output_dir.glob("sub-*/**/anat/*_desc-volume_morph.tsv"))
    checks = {t1w: mask_quality(config.output_dir, t1w) for t1w in t1w_files}
    for t1w, failed in checks.items():
        if failed:
            LOGGER.warning("%s: FAILED CHECKS: %s", Path(t1w).name, "; ".join(failed))
        else:
            LOGGER.info("%s: OK", Path(t1w).name)
    LOGGER.info(
        "Participant level done in %.0f s: %d ROI table(s), %d of %d scan(s) pass the checks; reports: %s",
        time.monotonic() - started, len(tables), sum(not f for f in checks.values()), len(checks),
        ", ".join(str(r) for r in reports),
    )
    suspect = [Path(t).name for t, failed in checks.items() if failed]
    if suspect and config.fail_on_qc:
        raise QualityCheckError(
            f"{len(suspect)} scan(s) failed a sanity check of the brain mask ({', '.join(suspect)}): "
            "see QualityChecks in their desc-brain_mask.json and the reports; fix the input or "
            "try --skull-strip ants, or drop --fail-on-qc to keep the outputs as they are"
        )
    return tables
