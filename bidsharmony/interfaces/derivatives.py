"""A Nipype sink that writes one BIDS-Derivatives file and its JSON sidecar, atomically."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    SimpleInterface,
    Str,
    TraitedSpec,
    traits,
)

from ..utils.derivatives import derivative_bids_uri, derivative_path, generated_by, raw_bids_uri
from ..utils.io import atomic_copy, atomic_write_json


def _extension(path: str) -> str:
    """File extension, counting ``.nii.gz``/``.tsv.gz`` as one."""
    suffixes = Path(path).suffixes
    return "".join(suffixes[-2:]) if suffixes and suffixes[-1] == ".gz" else "".join(suffixes[-1:])


class _DerivativesDataSinkInputSpec(BaseInterfaceInputSpec):
    base_directory = Directory(mandatory=True, desc="root of the derivatives dataset")
    bids_dir = Directory(mandatory=True, desc="root of the raw dataset, for BIDS URIs")
    in_file = File(exists=True, mandatory=True, desc="the file to save")
    source_file = File(mandatory=True, desc="the raw file it derives from (names the output)")
    suffix = Str(mandatory=True)
    extension = Str(desc="default: the in_file's extension")
    datatype = Str("anat", usedefault=True)
    space = Str()
    res = Str()
    atlas = Str()
    label = Str()
    desc = Str()
    from_ = Str(desc="'from' entity of a transform")
    to = Str()
    mode = Str()
    sources = traits.List(Str, desc="relative paths of derivatives this file was made from")
    meta_dict = traits.Dict(desc="extra sidecar fields (parameters, SpatialReference...)")


class _DerivativesDataSinkOutputSpec(TraitedSpec):
    out_file = File(desc="the written file")
    out_meta = File(desc="its JSON sidecar")


class DerivativesDataSink(SimpleInterface):
    """Copy ``in_file`` to its BIDS-Derivatives name and write a sidecar.

    The sidecar carries ``Sources`` as BIDS URIs (``bids:raw:`` for the input scan,
    ``bids::`` for other derivatives), the software versions (``GeneratedBy``, see
    :func:`~bidsharmony.utils.derivatives.generated_by`) and ``meta_dict``. Both files
    are written to a temporary name and renamed, so an interrupted run never leaves a
    truncated file under a final name; a file that already holds the same bytes is left as
    it is, so re-running a cached sink restores deleted outputs without touching the others.
    """

    input_spec = _DerivativesDataSinkInputSpec
    output_spec = _DerivativesDataSinkOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        entities = {
            key: getattr(inputs, attr)
            for key, attr in (
                ("space", "space"), ("res", "res"), ("atlas", "atlas"), ("label", "label"),
                ("desc", "desc"), ("from", "from_"), ("to", "to"), ("mode", "mode"),
            )
            if getattr(inputs, attr)
        }
        extension = inputs.extension or _extension(inputs.in_file)
        rel = derivative_path(
            inputs.source_file, datatype=inputs.datatype, suffix=inputs.suffix, extension=extension, **entities
        )
        out_file = Path(inputs.base_directory) / rel
        atomic_copy(inputs.in_file, out_file, keep_identical=True)

        sources = [raw_bids_uri(inputs.source_file, inputs.bids_dir)]
        sources += [derivative_bids_uri(s) for s in (inputs.sources or [])]
        meta = {"Sources": sources, "GeneratedBy": generated_by()}
        meta.update(inputs.meta_dict or {})
        out_meta = out_file.parent / (out_file.name[: -len(extension)] + ".json")
        if extension == ".json":  # a JSON output is its own sidecar
            out_meta = out_file
        else:
            atomic_write_json(out_meta, meta, keep_identical=True)
        self._results["out_file"] = str(out_file)
        self._results["out_meta"] = str(out_meta)
        return runtime
