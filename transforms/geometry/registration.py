"""Image registration with SimpleITK: a moving scan (another series, modality or grid) onto a reference.

Centred initialisation, then a rigid (Euler) and an affine stage, optionally a B-spline stage, each driven by
Mattes mutual information (works across CT/MR contrasts) over a multi-resolution pyramid, with optimizer
scales from physical shifts. :func:`register_images` works on SimpleITK images; :func:`to_sitk` /
:func:`from_sitk` convert clinseg's channel-first RAS MetaTensors (``transforms.io.scan.load_scan``) to and from
SimpleITK's LPS geometry; :class:`RegisterToReferenced` does it inside a MONAI dictionary pipeline.

The transform maps points of the fixed (reference) image to the moving image, as ITK's resampling uses it:
``moving(T(x)) ~ fixed(x)``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import MetaKeys, SpaceKeys

from transforms.io.scan import load_scan
from transforms.io.sitk import from_sitk, to_sitk

__all__ = [
    "RegisterToReferenced",
    "RegistrationOptions",
    "RegistrationResult",
    "from_sitk",
    "read_image",
    "register_images",
    "resample_to",
    "to_sitk",
]

_INITS = {"geometry": sitk.CenteredTransformInitializerFilter.GEOMETRY,
          "moments": sitk.CenteredTransformInitializerFilter.MOMENTS}  # fmt: skip


@dataclass(frozen=True)
class RegistrationOptions:
    """Knobs of :func:`register_images`.

    Attributes:
        init: centre the rigid stage on the images' ``"geometry"`` (grid centres) or ``"moments"`` (intensity
            centres of mass).
        bins: Mattes mutual information histogram bins.
        sampling: share of fixed voxels sampled (randomly, with ``seed``) per iteration.
        seed: sampling seed (>= 1; SimpleITK takes 0 as "seed from the clock"): the same inputs and seed give
            the same result.
        shrink: pyramid shrink factors, coarse to fine.
        smoothing_mm: Gaussian sigmas per pyramid level, mm.
        iterations: most optimizer iterations per level and stage.
        mesh_mm: B-spline control point spacing of the deformable stage, mm.
    """

    init: str = "geometry"
    bins: int = 50
    sampling: float = 0.2
    seed: int = 1
    shrink: tuple[int, ...] = (4, 2, 1)
    smoothing_mm: tuple[float, ...] = (2.0, 1.0, 0.0)
    iterations: int = 200
    mesh_mm: float = 50.0

    def __post_init__(self) -> None:
        if self.init not in _INITS:
            raise ValueError(f"init must be one of {sorted(_INITS)}, got {self.init!r}.")
        if self.seed < 1:
            raise ValueError(
                f"seed must be >= 1 (SimpleITK reads 0 as 'seed from the clock'), got {self.seed!r}."
            )
        if not 0.0 < self.sampling <= 1.0:
            raise ValueError(f"sampling must be in (0, 1], got {self.sampling!r}.")
        if len(self.shrink) != len(self.smoothing_mm) or not self.shrink:
            raise ValueError(
                f"shrink and smoothing_mm need one entry per pyramid level, got {self.shrink} and "
                f"{self.smoothing_mm}."
            )
        if self.bins < 4 or self.iterations < 1 or self.mesh_mm <= 0:
            raise ValueError(
                f"bins >= 4, iterations >= 1 and mesh_mm > 0 needed, got {self.bins}, {self.iterations}, "
                f"{self.mesh_mm}."
            )


@dataclass
class RegistrationResult:
    """What :func:`register_images` found.

    Attributes:
        transform: fixed -> moving points (mm, LPS): the affine, then the B-spline when deformable.
        metric: final Mattes mutual information of the last stage (negative; lower is better).
        iterations: optimizer iterations over all stages and levels.
        stop_condition: the last stage's optimizer stop condition.
        stages: per stage ``{"stage", "metric", "iterations", "stop_condition"}``.
    """

    transform: sitk.CompositeTransform
    metric: float
    iterations: int
    stop_condition: str
    stages: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        """One line: stages, final metric, iterations."""
        names = " + ".join(s["stage"] for s in self.stages)
        return (
            f"{names}: Mattes MI {self.metric:.4f} after {self.iterations} iterations ({self.stop_condition})"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-able record: the affine matrix, translation and centre (LPS mm), metric, iterations, stages."""
        affine = sitk.AffineTransform(self.transform.GetNthTransform(0))
        return {
            "matrix": list(affine.GetMatrix()),
            "translation": list(affine.GetTranslation()),
            "center": list(affine.GetCenter()),
            "deformable": self.transform.GetNumberOfTransforms() > 1,
            "metric": self.metric,
            "iterations": self.iterations,
            "stages": self.stages,
        }


def _method(options: RegistrationOptions, deformable: bool = False) -> sitk.ImageRegistrationMethod:
    """Mattes MI on random samples, linear interpolation, the pyramid; regular-step gradient descent (steps
    of at most 1 mm voxel shift, scales from physical shifts), or L-BFGS-B for the B-spline stage."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=options.bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(options.sampling, options.seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel(list(options.shrink))
    method.SetSmoothingSigmasPerLevel(list(options.smoothing_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    if deformable:
        method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=options.iterations)
        return method
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=options.iterations, relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )  # fmt: skip
    method.SetOptimizerScalesFromPhysicalShift()
    return method


def _run(
    method: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image, stage: str
) -> dict[str, Any]:
    """Optimise the method's initial transform in place; the stage's record."""
    count = [0]
    method.AddCommand(sitk.sitkIterationEvent, lambda: count.__setitem__(0, count[0] + 1))
    method.Execute(fixed, moving)
    return {
        "stage": stage,
        "metric": float(method.GetMetricValue()),
        "iterations": count[0],
        "stop_condition": method.GetOptimizerStopConditionDescription(),
    }


def _check_image(image: sitk.Image, name: str) -> sitk.Image:
    if not isinstance(image, sitk.Image):
        raise TypeError(f"register_images: {name} must be a SimpleITK image, got {type(image).__name__}.")
    if image.GetDimension() not in (2, 3) or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"register_images: {name} must be a 2D or 3D single-channel image, got dimension "
            f"{image.GetDimension()} with {image.GetNumberOfComponentsPerPixel()} components."
        )
    return sitk.Cast(image, sitk.sitkFloat32)


def register_images(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    deformable: bool = False,
    options: RegistrationOptions | None = None,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed``: centred init, rigid, affine (then B-spline when ``deformable``).

    Args:
        fixed: the reference image (2D or 3D, one channel), any pixel type.
        moving: the image to align, same dimension; other grid, spacing and contrast allowed.
        deformable: add a B-spline stage (``options.mesh_mm`` control point spacing).
        options: :class:`RegistrationOptions` (defaults: 50 bins, 20 % sampling, shrink 4/2/1).

    Returns:
        :class:`RegistrationResult` with the composite fixed -> moving transform.

    Raises:
        ValueError: images of different dimension, more than one component, or bad options.
    """
    options = options or RegistrationOptions()
    fixed, moving = _check_image(fixed, "fixed"), _check_image(moving, "moving")
    dims = fixed.GetDimension()
    if moving.GetDimension() != dims:
        raise ValueError(f"register_images: fixed is {dims}D but moving is {moving.GetDimension()}D.")
    rigid = sitk.Euler3DTransform() if dims == 3 else sitk.Euler2DTransform()
    initial = sitk.CenteredTransformInitializer(fixed, moving, rigid, _INITS[options.init])
    method = _method(options)
    method.SetInitialTransform(initial, inPlace=True)
    records = [_run(method, fixed, moving, "rigid")]

    affine = sitk.AffineTransform(dims)
    affine.SetCenter(initial.GetCenter())
    affine.SetMatrix(initial.GetMatrix())
    affine.SetTranslation(initial.GetTranslation())
    method = _method(options)
    method.SetInitialTransform(affine, inPlace=True)
    records.append(_run(method, fixed, moving, "affine"))
    composite = sitk.CompositeTransform(affine)

    if deformable:
        size = [max(1, round(n * s / options.mesh_mm)) for n, s in zip(fixed.GetSize(), fixed.GetSpacing())]
        bspline = sitk.BSplineTransformInitializer(fixed, size)
        method = _method(options, deformable=True)
        method.SetMovingInitialTransform(affine)
        method.SetInitialTransform(bspline, inPlace=True)
        records.append(_run(method, fixed, moving, "bspline"))
        composite.AddTransform(bspline)
    last = records[-1]
    return RegistrationResult(
        transform=composite,
        metric=last["metric"],
        iterations=sum(r["iterations"] for r in records),
        stop_condition=last["stop_condition"],
        stages=records,
    )


def resample_to(
    fixed: sitk.Image,
    moving: sitk.Image,
    transform: sitk.Transform,
    *,
    interpolator: int = sitk.sitkLinear,
    default_value: float | None = None,
) -> sitk.Image:
    """``moving`` on ``fixed``'s grid through ``transform`` (fixed -> moving points).

    Args:
        interpolator: ``sitk.sitkLinear`` for images, ``sitk.sitkNearestNeighbor`` for labels.
        default_value: value outside the moving image (default: its minimum, e.g. air in CT).

    Returns:
        An image with ``fixed``'s size, spacing, origin and direction and ``moving``'s pixel type.
    """
    if default_value is None:
        default_value = float(sitk.GetArrayViewFromImage(moving).min())
    return sitk.Resample(moving, fixed, transform, interpolator, default_value, moving.GetPixelID())


def read_image(path: str | Path) -> sitk.Image:
    """A NIfTI file or DICOM series through :func:`transforms.io.scan.load_scan` (its checks, its geometry) as a
    SimpleITK image (float32).

    Raises:
        ScanLoadError: the path cannot be loaded (the message names it).
    """
    return to_sitk(load_scan(path))


class RegisterToReferenced(MapTransform):
    """Register each key's image to ``reference_key``'s and replace it by its resampling on the reference grid.

    The first channel drives the registration; every channel is resampled (linear) with the one transform.
    The output MetaTensor takes the reference's affine and spatial shape; its meta gains ``"registration"``
    (:meth:`RegistrationResult.as_dict`: affine matrix, translation and centre in LPS mm, metric, iterations).

    Args:
        keys: channels to align (3D MetaTensors ``(C, X, Y, Z)``, e.g. from ``LoadScand``).
        reference_key: the fixed channel; its image is left as it is.
        deformable: add a B-spline stage.
        options: :class:`RegistrationOptions`.
        allow_missing_keys: skip absent keys instead of raising.

    Example (bundle YAML)::

        - _target_: transforms.geometry.registration.RegisterToReferenced
          keys: [t2]
          reference_key: t1c
    """

    def __init__(
        self,
        keys: KeysCollection,
        reference_key: str,
        deformable: bool = False,
        options: RegistrationOptions | Mapping[str, Any] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if reference_key in self.keys:
            raise ValueError(f"RegisterToReferenced: reference_key {reference_key!r} is also among keys.")
        self.reference_key = reference_key
        self.deformable = deformable
        self.options = RegistrationOptions(**options) if isinstance(options, Mapping) else options

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.reference_key not in d:
            raise KeyError(f"RegisterToReferenced: reference key {self.reference_key!r} is missing.")
        reference = d[self.reference_key]
        if not isinstance(reference, MetaTensor):
            raise TypeError(
                f"RegisterToReferenced: {self.reference_key!r} must be a MetaTensor (load it first)."
            )
        fixed = to_sitk(reference[:1])
        for key in self.key_iterator(d):
            image = d[key]
            if not isinstance(image, MetaTensor):
                raise TypeError(f"RegisterToReferenced: {key!r} must be a MetaTensor (load it first).")
            result = register_images(
                fixed, to_sitk(image[:1]), deformable=self.deformable, options=self.options
            )
            channels = [
                from_sitk(resample_to(fixed, to_sitk(image[c : c + 1]), result.transform))[0]
                for c in range(image.shape[0])
            ]
            meta = dict(image.meta)
            meta.update({
                MetaKeys.AFFINE: reference.affine.clone(),
                MetaKeys.SPATIAL_SHAPE: np.asarray(reference.shape[1:], dtype=np.int64),
                MetaKeys.SPACE: reference.meta.get(MetaKeys.SPACE, SpaceKeys.RAS),
                "registration": {"reference": self.reference_key, **result.as_dict()},
            })  # fmt: skip
            array = np.stack(channels).astype(np.float32, copy=False)
            d[key] = MetaTensor(torch.from_numpy(array), meta=meta)
        return d
