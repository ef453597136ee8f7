"""Preview PNG: size, overlay colours where the mask is, radiological orientation, LPS == RAS picture."""

from __future__ import annotations

import struct

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from nibabel.affines import voxel_sizes
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from scipy import ndimage

from pipeline.preview import OVERLAY_ALPHA, label_colour, orthogonal_slices, render_preview

SHAPE = (33, 34, 35)
RAS = np.diag([0.8, 0.8, 2.5, 1.0])


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def _scene():
    """A body-like gradient image; label 1 is a box at the patient's right-anterior-superior corner."""
    image = np.linspace(-200, 200, np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    mask = np.zeros(SHAPE, np.uint8)
    mask[24:31, 24:31, 24:31] = 1  # high x = right, high y = anterior, high z = superior (RAS)
    mask[2:5, 2:5, 2:5] = 2
    return image, mask


def _lps_copy(array: np.ndarray, affine: np.ndarray):
    nx, ny = array.shape[:2]
    flip = np.array([[-1, 0, 0, nx - 1], [0, -1, 0, ny - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    return np.ascontiguousarray(array[::-1, ::-1]), affine @ flip


def test_radiological_orientation_and_aspect():
    image, mask = _scene()
    panels = {name: (img, m, aspect) for name, img, m, aspect in orthogonal_slices(image, mask, RAS)}
    assert list(panels) == ["axial", "coronal", "sagittal"]
    _, ax_mask, ax_aspect = panels["axial"]
    assert ax_mask.shape == (34, 33) and ax_aspect == pytest.approx(1.0)
    rows, cols = np.nonzero(ax_mask == 1)  # right on screen left, anterior on top
    assert cols.max() < 33 // 2 and rows.max() < 34 // 2
    _, co_mask, co_aspect = panels["coronal"]
    rows, cols = np.nonzero(co_mask == 1)  # right on screen left, superior on top
    assert cols.max() < 33 // 2 and rows.max() < 35 // 2 and co_aspect == pytest.approx(2.5 / 0.8)
    _, sa_mask, sa_aspect = panels["sagittal"]
    rows, cols = np.nonzero(sa_mask == 1)  # anterior on screen left, superior on top
    assert cols.max() < 34 // 2 and rows.max() < 35 // 2 and sa_aspect == pytest.approx(2.5 / 0.8)
    assert (ax_mask == 1).sum() == 49  # the slices pass through the largest structure (label 1)


def test_lps_and_ras_inputs_give_the_same_picture(tmp_path):
    image, mask = _scene()
    lps_image, lps_affine = _lps_copy(image, RAS)
    lps_mask, _ = _lps_copy(mask, RAS)
    a = render_preview(image, mask, RAS, {1: "liver", 2: "spleen"}, tmp_path / "ras.png", window=(0, 400))
    b = render_preview(
        lps_image, lps_mask, lps_affine, {1: "liver", 2: "spleen"}, tmp_path / "lps.png", window=(0, 400)
    )
    np.testing.assert_array_equal(mpimg.imread(a), mpimg.imread(b))


def _coloured(pixels: np.ndarray, rgb, tol=0.03) -> int:
    expected = np.asarray(rgb) * OVERLAY_ALPHA  # blended over a black image (window puts it at 0)
    return int((np.abs(pixels[..., :3] - expected).max(-1) < tol).sum())


def test_png_size_and_overlay_colours(tmp_path):
    image = np.full(SHAPE, -1000.0, np.float32)  # below the window: black
    _, mask = _scene()
    out = render_preview(image, mask, RAS, {1: "liver", 2: "spleen"}, tmp_path / "p.png", window=(40, 400))
    assert _png_size(out) == (1400, 400)
    pixels = mpimg.imread(out)
    assert _coloured(pixels, label_colour(1)) > 100
    empty = render_preview(
        image, np.zeros_like(mask), RAS, {1: "liver"}, tmp_path / "e.png", window=(40, 400)
    )
    assert _coloured(mpimg.imread(empty), label_colour(1)) == 0
    chroma = np.ptp(mpimg.imread(empty)[..., :3], axis=-1)
    assert chroma.max() < 0.02  # nothing coloured at all without a mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.png", "p.png"]


def test_2d_single_panel_and_metatensor(tmp_path):
    image, mask = _scene()
    aff = torch.as_tensor(np.diag([0.5, 0.7, 1.0, 1.0]))
    out = render_preview(
        MetaTensor(torch.full(SHAPE[:2], -1000.0)[None], affine=aff),
        MetaTensor(torch.as_tensor(mask[:, :, 27])[None], affine=aff),
        None,
        {1: "lesion"},
        tmp_path / "p2d.png",
        window=(40, 400),
    )
    assert _png_size(out) == (600, 400)
    assert _coloured(mpimg.imread(out), label_colour(1)) > 20
    panels = orthogonal_slices(image[:, :, 27], mask[:, :, 27], np.diag([0.5, 0.7, 1.0, 1.0]))
    assert [p[0] for p in panels] == ["axial"] and panels[0][3] == pytest.approx(0.7 / 0.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"path": "p.jpg"}, "must end with .png"),
        ({"window": (40, 0)}, "width > 0"),
        ({"mask": np.zeros((3, 3, 3), np.uint8)}, "must equal mask shape"),
        ({"mask": np.full(SHAPE, 0.5, np.float32)}, "integer labels"),
    ],
)
def test_input_errors(tmp_path, kwargs, match):
    image, mask = _scene()
    args = {"image": image, "mask": mask, "affine": RAS, "labels": {1: "a"}, "path": "p.png", "window": None}
    args.update(kwargs)
    args["path"] = tmp_path / args["path"]
    with pytest.raises(ValueError, match=match):
        render_preview(**args)
    assert not list(tmp_path.iterdir())


def _old_orthogonal_slices(image: np.ndarray, mask: np.ndarray, affine: np.ndarray):
    """The previous algorithm: reorient whole volumes to RAS, then the structure's voxel nearest its centroid."""
    img, lab = image.astype(np.float32), mask.astype(np.int32)
    flat = img.ndim == 2
    if flat:
        img, lab = img[:, :, None], lab[:, :, None]
    to_ras = ornt_transform(io_orientation(affine), axcodes2ornt(("R", "A", "S")))
    sx, sy, sz = voxel_sizes(affine @ inv_ornt_aff(to_ras, img.shape))
    img, lab = apply_orientation(img, to_ras), apply_orientation(lab, to_ras)
    counts = np.bincount(lab.ravel().astype(np.int64))
    counts[0] = 0
    if not counts.any():
        cx, cy, cz = (s // 2 for s in lab.shape)
    else:
        inside = lab == int(np.argmax(counts))
        centroid = np.asarray(ndimage.center_of_mass(inside))
        points = np.argwhere(inside)
        cx, cy, cz = points[np.argmin(((points - centroid) ** 2).sum(axis=1))]
    panels = [("axial", img[::-1, ::-1, cz].T, lab[::-1, ::-1, cz].T, sy / sx)]
    if not flat:
        panels.append(("coronal", img[::-1, cy, ::-1].T, lab[::-1, cy, ::-1].T, sz / sx))
        panels.append(("sagittal", img[cx, ::-1, ::-1].T, lab[cx, ::-1, ::-1].T, sz / sy))
    return [(name, np.ascontiguousarray(i), np.ascontiguousarray(m), float(a)) for name, i, m, a in panels]


def _oblique(degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    rot = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    return rot @ np.array([[0, 0, -2.0, 5], [0.7, 0, 0, -3], [0, -0.9, 0, 1], [0, 0, 0, 1]])


AFFINES = {
    "ras": RAS,
    "lps": np.diag([-0.8, -0.8, 2.5, 1.0]),
    "permuted": np.array([[0, 0, -2.0, 0], [0.7, 0, 0, 0], [0, -0.9, 0, 0], [0, 0, 0, 1]]),
    "oblique": _oblique(35.0),
    "oblique_flipped": _oblique(-50.0) @ np.diag([1, -1, 1, 1]),
}


def _label_volumes(shape):
    """Random labels (C and Fortran order), two equal boxes (tie), a ring with its centroid outside, empty."""
    rng = np.random.default_rng(7)
    random = rng.integers(0, 4, shape, dtype=np.uint8) * (rng.random(shape) < 0.2)
    tie = np.zeros(shape, np.uint8)
    tie[tuple(slice(1, 5) for _ in shape)] = 2
    tie[tuple(slice(n - 5, n - 1) for n in shape)] = 1  # same size as label 2: label 1 wins, as np.argmax
    ring = np.zeros(shape, np.uint16)
    x, y = np.ogrid[: shape[0], : shape[1]]
    r2 = (x - shape[0] / 2) ** 2 + (y - shape[1] / 2) ** 2
    ring[..., :] = ((r2 > 16) & (r2 < 64))[(...,) + (None,) * (len(shape) - 2)] * 300
    return {
        "random": random,
        "random_fortran": np.asfortranarray(random),  # scanned in slabs along the last axis
        "tie": tie,
        "ring": ring,
        "empty": np.zeros(shape, np.uint8),
    }


@pytest.mark.parametrize("affine_name", list(AFFINES))
@pytest.mark.parametrize("shape", [(17, 19, 21), (19, 17)])
def test_same_panels_as_whole_volume_reorientation(affine_name, shape, monkeypatch):
    monkeypatch.setattr("pipeline.preview.SLAB_VOXELS", 700)  # several slabs even on tiny volumes
    affine = AFFINES[affine_name]
    image = np.random.default_rng(3).normal(0, 100, shape)  # float64: panels are float32 as before
    for volume_name, mask in _label_volumes(shape).items():
        new = orthogonal_slices(image, mask, affine)
        old = _old_orthogonal_slices(image, mask, affine)
        assert [p[0] for p in new] == [p[0] for p in old], volume_name
        for (name, img, lab, aspect), (_, old_img, old_lab, old_aspect) in zip(new, old):
            assert img.dtype == old_img.dtype and lab.dtype == old_lab.dtype, (volume_name, name)
            np.testing.assert_array_equal(img, old_img, err_msg=f"{volume_name} {name}")
            np.testing.assert_array_equal(lab, old_lab, err_msg=f"{volume_name} {name}")
            assert aspect == old_aspect, (volume_name, name)
