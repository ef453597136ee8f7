"""The bundle's ``writer``: label maps written as ``OUT/<case>/seg.nii.gz``, the layout of ``clinseg predict``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform

from pipeline.outputs.nifti import write_mask_nifti
from pipeline.outputs.registry import SEG_NAME

__all__ = ["SaveSegmentationd"]


class SaveSegmentationd(MapTransform):
    """Writes each label map ``(1, X, Y[, Z])`` (MetaTensor, its affine the input's) atomically to
    ``output_dir/<data[case_key]>/seg.nii.gz``; the data pass through unchanged.

    Args:
        keys: the label maps (``pred``).
        output_dir: output folder.
        case_key: the datalist key naming the case folder.
    """

    def __init__(self, keys: KeysCollection, output_dir: str | Path, case_key: str = "case") -> None:
        super().__init__(keys)
        self.output_dir = Path(output_dir)
        self.case_key = case_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.case_key not in d:
            raise KeyError(f"SaveSegmentationd: the data lack {self.case_key!r}, which names the case folder")
        name = str(d[self.case_key])
        if name in ("", ".", "..") or Path(name).name != name:
            raise ValueError(f"SaveSegmentationd: case {name!r} is not a single folder name")
        case_dir = self.output_dir / name
        case_dir.mkdir(parents=True, exist_ok=True)
        for key in self.key_iterator(d):
            write_mask_nifti(d[key], None, case_dir / SEG_NAME)
        return d
