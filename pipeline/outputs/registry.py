"""The per-case outputs as one registry: each entry names the output, its file, its writer and its flag.

Everything else derives from :data:`OUTPUTS`: :class:`OutputOptions` (one ``bool`` field per optional output),
the ``predict``/``serve`` flags, :func:`required_outputs`, the case writer (:mod:`pipeline.batch.case_outputs`),
the completion-marker settings (:func:`output_settings`) and the files pushed to an archive
(:func:`pushed_names`). Adding an output is one :class:`OutputSpec` here.

Every writer has one signature, ``writer(case: CaseData, path: Path) -> None``; it writes ``path`` atomically.
This module imports no torch or MONAI at import time (the CLI builds its flags from it): writers import their
libraries when they run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, make_dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from monai.data import MetaTensor

__all__ = [
    "DICOM_SEG_NAME",
    "OUTPUTS",
    "PREVIEW_NAME",
    "PROBABILITIES_NAME",
    "RTSTRUCT_NAME",
    "SEG_NAME",
    "VOLUMES_NAME",
    "CaseData",
    "OutputOptions",
    "OutputSkipped",
    "OutputSpec",
    "enabled_outputs",
    "output_settings",
    "pushed_names",
    "required_outputs",
]

SEG_NAME = "seg.nii.gz"
VOLUMES_NAME = "volumes.json"
PREVIEW_NAME = "preview.png"
PROBABILITIES_NAME = "probabilities.nii.gz"
DICOM_SEG_NAME = "seg.dcm"
RTSTRUCT_NAME = "rtstruct.dcm"


class OutputSkipped(Exception):
    """An output that does not apply to this case (e.g. DICOM SEG of a multi-frame source); logged, not failed."""


@dataclass(frozen=True)
class CaseData:
    """What every writer gets: one segmented case on its input grid.

    Attributes:
        segmentation: a ``pipeline.inference.case.Segmentation``: ``labels`` ``(1, X, Y[, Z])`` and
            ``probabilities`` ``(C, X, Y[, Z])`` when kept.
        image: the loaded input ``(C, X, Y[, Z])`` (HU for CT); DICOM inputs carry ``meta["dicom_files"]``.
        affine: ``(4, 4)`` voxel -> RAS mm of the input grid.
        labels: label id -> structure name.
        case_dir: the case's output folder.
        kind: ``"dicom"`` or ``"nifti"``.
        display_window: ``(level, width)`` of the preview; ``None``: a percentile window.
        algorithm_name: recorded in DICOM outputs.
    """

    segmentation: Any
    image: MetaTensor
    affine: np.ndarray
    labels: Mapping[int, str]
    case_dir: Path
    kind: str
    display_window: Sequence[float] | None = None
    algorithm_name: str = "clinseg"

    @property
    def seg(self) -> MetaTensor:
        return self.segmentation.labels

    @cached_property
    def volumes(self) -> list[dict]:
        """Volume rows per label (``voxels``, ``volume_ml``, intensity statistics of channel 0)."""
        from pipeline.outputs.slab_volumes import volumes_by_slab

        return volumes_by_slab(self.seg, self.image[:1], self.affine, self.labels)

    def dicom_source(self, *, single_frame: bool = False) -> tuple[list[str], list[int] | None]:
        """The source DICOM files in slice order and the frame numbers of a multi-frame source.

        Raises:
            OutputSkipped: no labels, not a 3D series with one file per slice (or one multi-frame file), or
                ``single_frame`` asked for and the source is multi-frame.
            ValueError: a source file lacks the SOPClassUID a referencing object must name.
        """
        files = [str(f) for f in self.image.meta.get("dicom_files", [])]
        frames = self.image.meta.get("frame_numbers")
        frames = None if frames is None else [int(f) for f in frames]
        slices = self.seg.shape[-1] if self.seg.ndim == 4 else 0
        multi_frame = frames is not None and len(files) == 1 and len(frames) == slices
        if not self.labels or not slices or not (multi_frame or (frames is None and len(files) == slices)):
            raise OutputSkipped(
                f"needs a 3D series with one source file per slice or one multi-frame file "
                f"({len(files)} files for {slices} slices)"
            )
        if single_frame and multi_frame:
            raise OutputSkipped("its contours reference single-frame images, the source is multi-frame")
        import pydicom

        for name in files:
            found = pydicom.dcmread(name, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            if not str(found.get("SOPClassUID", "")):
                raise ValueError(f"source file {Path(name).name} has no SOPClassUID (0008,0016) to reference")
        return files, frames


Writer = Callable[[CaseData, Path], None]


@dataclass(frozen=True)
class OutputSpec:
    """One per-case output.

    Attributes:
        name: option name (a field of :class:`OutputOptions`) and key in the settings.
        file_name: file inside the case folder.
        writer: ``writer(case, path)``.
        default: on unless a flag turns it off; ``None``: always written (no option, no flag).
        flag: the ``predict``/``serve`` flag (``--no-...`` for outputs on by default).
        help: the flag's help.
        dicom_only: written for DICOM inputs only; failing to write it is a warning of the case, not its failure.
        pushed: stored back to the archive by ``--push`` / ``serve --push-to``.
    """

    name: str
    file_name: str
    writer: Writer
    default: bool | None
    flag: str = ""
    help: str = ""
    dicom_only: bool = False
    pushed: bool = False


def _mask(case: CaseData, path: Path) -> None:
    from pipeline.outputs.nifti import write_mask_nifti

    write_mask_nifti(case.seg, case.affine, path)


def _volumes(case: CaseData, path: Path) -> None:
    from pipeline.core.atomic import atomic_write_json

    atomic_write_json(path, case.volumes)


def _preview(case: CaseData, path: Path) -> None:
    from pipeline.outputs.preview import render_preview

    render_preview(
        case.image[:1], case.seg, case.affine, case.labels, path, window=case.display_window, title=case.case_dir.name
    )  # fmt: skip


def _probabilities(case: CaseData, path: Path) -> None:
    from pipeline.outputs.nifti import write_probabilities_nifti

    if case.segmentation.probabilities is None:
        raise ValueError("probabilities were asked for but the segmentation holds none")
    write_probabilities_nifti(case.segmentation.probabilities, case.affine, path)


def _dicom_seg(case: CaseData, path: Path) -> None:
    from pipeline.outputs.dicom_seg import write_dicom_seg

    files, frames = case.dicom_source()
    write_dicom_seg(case.seg, files, case.labels, path, algorithm_name=case.algorithm_name, frame_numbers=frames)


def _rtstruct(case: CaseData, path: Path) -> None:
    from pipeline.outputs.rtstruct import write_rtstruct

    files, _ = case.dicom_source(single_frame=True)
    write_rtstruct(case.seg, files, case.labels, path, algorithm_name=case.algorithm_name)


def _nrrd(case: CaseData, path: Path) -> None:
    import numpy as np
    import SimpleITK as sitk

    from pipeline.core.atomic import atomic_write
    from transforms.io.sitk import to_sitk

    labels = np.asarray(case.seg.detach().cpu().numpy(), dtype=np.uint8)
    with atomic_write(path) as tmp:
        sitk.WriteImage(to_sitk(labels, case.affine), str(tmp), useCompression=True)


OUTPUTS: tuple[OutputSpec, ...] = (
    OutputSpec("mask", SEG_NAME, _mask, None),
    OutputSpec("volumes", VOLUMES_NAME, _volumes, None),
    OutputSpec("preview", PREVIEW_NAME, _preview, True, "--no-preview", "skip preview.png"),
    OutputSpec("probabilities", PROBABILITIES_NAME, _probabilities, False, "--save-probabilities",
               "also write probabilities.nii.gz (classes on the last axis, uint8)"),
    OutputSpec("nrrd", "seg.nrrd", _nrrd, False, "--nrrd", "also write the mask as seg.nrrd (3D Slicer)"),
    OutputSpec("dicom_seg", DICOM_SEG_NAME, _dicom_seg, True, "--no-dicom-seg", "skip seg.dcm for DICOM inputs",
               dicom_only=True, pushed=True),
    OutputSpec("rtstruct", RTSTRUCT_NAME, _rtstruct, False, "--rtstruct",
               "also write rtstruct.dcm (RT Structure Set) for single-frame DICOM series", dicom_only=True,
               pushed=True),
)  # fmt: skip
"""The registry, in writing order (the mask first)."""

OutputOptions = make_dataclass(
    "OutputOptions",
    [(s.name, bool, field(default=s.default)) for s in OUTPUTS if s.default is not None],
    frozen=True,
    namespace={"__module__": __name__},
)
OutputOptions.__doc__ = "Which optional outputs a case gets: one ``bool`` per optional entry of ``OUTPUTS``."


def enabled_outputs(options: Any, kind: str | None = None) -> list[OutputSpec]:
    """The entries written under ``options`` for an input of ``kind`` (``None``: whatever the kind)."""
    return [
        s
        for s in OUTPUTS
        if (s.default is None or getattr(options, s.name)) and (not s.dicom_only or kind in (None, "dicom"))
    ]


def required_outputs(options: Any) -> list[str]:
    """Files every finished case has under ``options`` (DICOM outputs come on top for DICOM inputs)."""
    return [s.file_name for s in enabled_outputs(options) if not s.dicom_only]


def pushed_names(options: Any) -> list[str]:
    """The files of a case folder stored back to an archive under ``options``."""
    return [s.file_name for s in enabled_outputs(options) if s.pushed]


def output_settings(options: Any) -> dict[str, list[str]]:
    """The outputs' part of a completion marker's settings: the optional outputs turned on, so an output added
    to the registry (off by default) leaves finished cases finished."""
    return {"outputs": sorted(k for k, on in asdict(options).items() if on)}
