"""``load_scan``: one entry point for NIfTI files, DICOM folders and enhanced multi-frame DICOM files.

Returns channel-first MONAI MetaTensors ``(C, X, Y[, Z])`` with a RAS affine and the meta keys that
``LoadImaged`` + ``EnsureChannelFirstd`` produce (``filename_or_obj``, ``affine``, ``original_affine``,
``spatial_shape``, ``original_channel_dim``, ``space``), so ``Invertd`` and ``SaveImage`` work downstream.
``LoadScan``/``LoadScand`` also take images already in memory (MetaTensor, nibabel, SimpleITK, ``(array,
affine)``: :mod:`transforms.io.memory`), with the same checks and meta.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from os import PathLike
from pathlib import Path

import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import ensure_tuple

from transforms.dicom.series import load_dicom
from transforms.dicom.discovery import SeriesRule
from transforms.io.errors import ScanLoadError
from transforms.io.memory import load_in_memory, scan_tensor
from transforms.io.nifti import is_nifti_path, load_nifti

__all__ = ["LoadScan", "LoadScand", "ScanLoadError", "SeriesRule", "load_scan"]


def _rule(series_rule: SeriesRule | Mapping | None) -> SeriesRule | None:
    if series_rule is None or isinstance(series_rule, SeriesRule):
        return series_rule
    if isinstance(series_rule, Mapping):
        unknown = set(series_rule) - {"modality", "description", "prefer_most_slices", "image_type"}
        if unknown:
            raise ValueError(
                f"series_rule has unknown keys {sorted(unknown)}; valid: modality, description, prefer_most_slices, "
                "image_type."
            )
        return SeriesRule(**series_rule)
    raise ValueError(
        f"series_rule must be a SeriesRule, a mapping or None, got {type(series_rule).__name__}."
    )


def _as_labels(array: np.ndarray, path: Path) -> np.ndarray:
    """DICOM values as exact int32 labels; raise when they are not integers."""
    if not np.array_equal(array, np.round(array)):
        raise ScanLoadError(f"{path}: label values must be integers.")
    return array.astype(np.int32)


def load_scan(
    path: str | Path,
    *,
    series_uid: str | None = None,
    series_rule: SeriesRule | Mapping | None = None,
    spatial_dims: int = 3,
    dtype: np.dtype | type | None = None,
    label: bool = False,
    channel_axis: int | None = None,
    workers: int | None = None,
) -> MetaTensor:
    """Load a scan as a channel-first MetaTensor.

    Args:
        path: NIfTI file, DICOM folder (or a patient folder with DICOM files in sub-folders), or one DICOM file
            (e.g. enhanced multi-frame CT/MR).
        series_uid: DICOM SeriesInstanceUID to load when the folder holds several series.
        series_rule: :class:`SeriesRule` or mapping (``modality``, ``description`` regex, ``prefer_most_slices``,
            ``image_type``).
        spatial_dims: 3 -> ``(C, X, Y, Z)``; 2 -> ``(C, X, Y)`` from a single slice / 2D file.
        dtype: image dtype (default float32; CT in HU). Ignored when ``label`` is set.
        label: keep integer label values exact (integer dtype, no float conversion).
        channel_axis: channel axis of a 4D NIfTI file (refused without it).
        workers: DICOM reading/decoding threads.

    Returns:
        MetaTensor ``(C, X, Y[, Z])`` (C = 1 except for 4D NIfTI with ``channel_axis``), affine RAS in mm.

    Raises:
        ScanLoadError: missing path, empty folder, no DICOM image series, broken or truncated series files,
            non-finite voxels, degenerate affines, oversized headers, 2D files for spatial_dims=3 ...
            The message names the path and the problem.
        ValueError: invalid arguments.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    path = Path(path)
    if not path.exists():
        raise ScanLoadError(f"{path}: no such file or folder.")
    if path.is_dir() and not any(path.iterdir()):
        raise ScanLoadError(f"{path}: empty folder.")
    channel_dim: float | int = float("nan")
    if path.is_file() and is_nifti_path(path):
        array, affine, extra = load_nifti(
            path, spatial_dims=spatial_dims, channel_axis=channel_axis, label=label, dtype=dtype
        )
        if channel_axis is not None:
            channel_dim = 0
    else:
        if channel_axis is not None:
            raise ValueError(f"channel_axis is for 4D NIfTI files; {path} is DICOM.")
        array, affine, extra = load_dicom(
            path,
            series_uid=series_uid,
            rule=_rule(series_rule),
            spatial_dims=spatial_dims,
            dtype=np.float32 if label else (dtype or np.float32),
            workers=workers,
        )
        if label:
            array = _as_labels(array, path)
    if channel_dim != 0:
        array = array[None]
    return scan_tensor(array, affine, filename=str(path), channel_dim=channel_dim, extra=extra)


class LoadScan(Transform):
    """Array transform: path -> MetaTensor ``(C, X, Y[, Z])`` via :func:`load_scan` (same arguments); an image
    already in memory (MetaTensor, nibabel, SimpleITK, ``(array, affine)``) via
    :func:`transforms.io.memory.load_in_memory`."""

    def __init__(
        self,
        series_uid: str | None = None,
        series_rule: SeriesRule | Mapping | None = None,
        spatial_dims: int = 3,
        dtype: np.dtype | type | None = None,
        label: bool = False,
        channel_axis: int | None = None,
        workers: int | None = None,
    ) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.kwargs = {
            "series_uid": series_uid,
            "series_rule": _rule(series_rule),
            "spatial_dims": spatial_dims,
            "dtype": dtype,
            "label": label,
            "channel_axis": channel_axis,
            "workers": workers,
        }

    def __call__(self, image: str | Path | object, source: str = "") -> MetaTensor:
        """``source`` names the image in errors about in-memory images (e.g. ``"input 'image'"``)."""
        if isinstance(image, (str, PathLike)):
            return load_scan(image, **self.kwargs)
        kwargs = {k: self.kwargs[k] for k in ("spatial_dims", "dtype", "label", "channel_axis")}
        return load_in_memory(image, source=source, **kwargs)


class LoadScand(MapTransform):
    """Dictionary transform: each key's path or in-memory image -> MetaTensor ``(C, X, Y[, Z])``.

    In-memory images (MetaTensor, nibabel, SimpleITK, ``(array, affine)`` with a RAS affine; see
    :mod:`transforms.io.memory`) come out as a path load of the same scan would: same meta, same checks, so the
    transforms after the loader (as in MONAI Deploy, which loads outside the bundle) work unchanged.

    Args:
        keys: keys holding paths or in-memory images (e.g. ``["image", "label"]``).
        label_keys: the keys loaded as labels (integer values kept exact), e.g. ``["label"]``.
        series_uid, series_rule, spatial_dims, dtype, channel_axis, workers: as :func:`load_scan`.
        image_only: when False also store each meta dict under ``meta_keys`` or ``f"{key}_{meta_key_postfix}"``.
        meta_keys: explicit meta dict keys, one per key.
        meta_key_postfix: postfix for meta dict keys when ``meta_keys`` is not given.
        allow_missing_keys: skip absent keys instead of raising.

    Example (bundle YAML)::

        - _target_: transforms.io.scan.LoadScand
          keys: [image, label]
          label_keys: [label]
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_keys: KeysCollection = (),
        series_uid: str | None = None,
        series_rule: SeriesRule | Mapping | None = None,
        spatial_dims: int = 3,
        dtype: np.dtype | type | None = None,
        channel_axis: int | None = None,
        workers: int | None = None,
        image_only: bool = True,
        meta_keys: KeysCollection | None = None,
        meta_key_postfix: str = "meta_dict",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        label_keys = list(ensure_tuple(label_keys))
        unknown = [k for k in label_keys if k not in self.keys]
        if unknown:
            raise ValueError(f"LoadScand: label_keys {unknown} are not among keys {list(self.keys)}.")
        if meta_keys is not None:
            meta_keys = list(ensure_tuple(meta_keys))
            if len(meta_keys) != len(self.keys):
                raise ValueError(
                    f"LoadScand: meta_keys needs {len(self.keys)} entries (one per key), got {len(meta_keys)}."
                )
        self.meta_keys = meta_keys or [f"{k}_{meta_key_postfix}" for k in self.keys]
        common = {
            "series_uid": series_uid,
            "series_rule": series_rule,
            "spatial_dims": spatial_dims,
            "dtype": dtype,
            "channel_axis": channel_axis,
            "workers": workers,
        }
        self.loaders = {k: LoadScan(label=k in label_keys, **common) for k in self.keys}
        self.image_only = image_only

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        missing = [k for k in self.keys if k not in d]
        if missing and not self.allow_missing_keys:
            case = d.get("case", "?")
            raise KeyError(f"LoadScand: case {case!r} lacks input(s) {missing}; needed: {list(self.keys)}")
        meta_of = dict(zip(self.keys, self.meta_keys))
        for key in self.key_iterator(d):
            d[key] = self.loaders[key](d[key], source=f"input {key!r}")
            if not self.image_only:
                d[meta_of[key]] = d[key].meta
        return d
