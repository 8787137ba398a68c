"""Nipype's SLURM plugins get each node's CPUs and memory; the example plugin files parse."""

from pathlib import Path

import pytest
import yaml

from bidsharmony.cli.participant import plugin_settings
from bidsharmony.config import Config
from bidsharmony.workflows.anatomical import MEM_GB, PRECOMPUTED_FIELDS, init_anat_preproc_wf
from bidsharmony.workflows.base import set_batch_resources

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "slurm"


def _by_name(workflow):
    return {node.name: node for node in workflow._get_all_nodes()}


def test_slurm_jobs_request_what_each_node_declares():
    workflow = init_anat_preproc_wf(omp_nthreads=3)
    nodes = _by_name(workflow)
    nodes["n4"].plugin_args = {"sbatch_args": "--qos=long"}  # a user's own request is kept
    assert set_batch_resources(workflow, "SLURM") == len(nodes)  # no in-process node here
    n4_mb = int(MEM_GB["n4"] * 1024)
    # a leading space: Nipype's SLURMGraph appends node arguments to its own without one
    assert nodes["n4"].plugin_args["sbatch_args"] == f" --qos=long --cpus-per-task=3 --mem={n4_mb}M"
    assert nodes["roi_volumes"].plugin_args["sbatch_args"].startswith(" --cpus-per-task=1 --mem=")


def test_other_plugins_and_in_process_nodes_are_left_alone():
    workflow = init_anat_preproc_wf()
    assert set_batch_resources(workflow, "MultiProc") == 0
    assert all(not node.plugin_args for node in workflow._get_all_nodes())
    nodes = _by_name(workflow)
    nodes["validate"].run_without_submitting = True
    set_batch_resources(workflow, "SLURMGraph")
    assert not nodes["validate"].plugin_args and nodes["segmentation"].plugin_args


def test_precomputed_inputs_drop_the_preprocessing_nodes():
    full = set(_by_name(init_anat_preproc_wf(skull_strip="ants")))
    deepbet = set(_by_name(init_anat_preproc_wf(skull_strip="deepbet")))
    brain_only = set(_by_name(init_anat_preproc_wf(precomputed=PRECOMPUTED_FIELDS[:2])))
    reused = set(_by_name(init_anat_preproc_wf(precomputed=PRECOMPUTED_FIELDS)))
    assert {"n4", "brain_extraction"} <= full and "registration" not in full
    assert {"n4", "deepbet", "registration"} <= deepbet and "brain_extraction" not in deepbet
    assert not brain_only & {"n4", "brain_extraction"} and "registration" in brain_only
    assert not reused & {"n4", "brain_extraction", "registration"} and "segmentation" in reused
    with pytest.raises(ValueError, match="precomputed"):
        init_anat_preproc_wf(precomputed=("forward_xfm",))


@pytest.mark.parametrize("name", ["nipype_slurm.yml", "nipype_slurmgraph.yml"])
def test_example_plugin_files_are_honoured(tmp_path, name):
    config = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="participant",
                    use_plugin=SCRIPTS / name)
    settings = plugin_settings(config)
    assert settings == {"plugin": yaml.safe_load((SCRIPTS / name).read_text())["plugin"],
                        "plugin_args": yaml.safe_load((SCRIPTS / name).read_text())["plugin_args"]}
    assert settings["plugin"] in ("SLURM", "SLURMGraph")


@pytest.mark.parametrize("precomputed", [(), PRECOMPUTED_FIELDS[:2], PRECOMPUTED_FIELDS])
def test_threaded_nodes_declare_their_threads(precomputed):
    for node in init_anat_preproc_wf(omp_nthreads=4, precomputed=precomputed)._get_all_nodes():
        threads = getattr(node.inputs, "num_threads", None)
        if isinstance(threads, int):
            assert node.n_procs == threads == 4, node.name
