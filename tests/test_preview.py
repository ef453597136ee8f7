"""Preview PNG: size, overlay colours where the mask is, a second row through a small structure the first row
misses, radiological orientation, slice indices, LPS == RAS picture, colour-blind-safe distinct colours."""

from __future__ import annotations

import struct

import matplotlib
import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from nibabel.affines import voxel_sizes
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from scipy import ndimage

from pipeline.outputs.preview import OKABE_ITO, OVERLAY_ALPHA, label_colour, orthogonal_slices, render_preview
from pipeline.outputs.preview_window import HISTOGRAM_BINS, percentile_window, preview_window

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
    panels = {p.name: (p.image, p.mask, p.aspect) for p in orthogonal_slices(image, mask, RAS)}
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


@pytest.mark.parametrize("affine_name", ["ras", "lps", "permuted", "oblique_flipped"])
def test_panels_name_their_slice_of_the_stored_array(affine_name):
    image, mask = _scene()
    affine = AFFINES[affine_name]
    for label, centre in ((None, (27, 27, 27)), (2, (3, 3, 3))):  # label 1 is the largest
        panels = orthogonal_slices(image, mask, affine, label=label)
        assert sorted(p.axis for p in panels) == [0, 1, 2]
        for p in panels:
            assert p.size == SHAPE[p.axis] and p.index == centre[p.axis]
            cut = np.take(mask, p.index, axis=p.axis)  # the stored slice, whatever the orientation
            np.testing.assert_array_equal(
                np.bincount(cut.ravel(), minlength=3), np.bincount(p.mask.ravel(), minlength=3)
            )


def test_lps_and_ras_inputs_give_the_same_picture(tmp_path, monkeypatch):
    image, mask = _scene()
    lps_image, lps_affine = _lps_copy(image, RAS)
    lps_mask, _ = _lps_copy(mask, RAS)
    ras = orthogonal_slices(image, mask, RAS)
    lps = orthogonal_slices(lps_image, lps_mask, lps_affine)
    assert [p.index for p in ras] == [27, 27, 27] and [p.index for p in lps] == [27, 34 - 1 - 27, 33 - 1 - 27]
    # the stored slice numbers in the panel titles differ (the LPS copy's x and y run backwards); all else not
    monkeypatch.setattr("pipeline.outputs.preview._panel_title", lambda panel, structure: panel.name)
    a = render_preview(image, mask, RAS, {1: "liver", 2: "spleen"}, tmp_path / "ras.png", window=(0, 400))
    b = render_preview(
        lps_image, lps_mask, lps_affine, {1: "liver", 2: "spleen"}, tmp_path / "lps.png", window=(0, 400)
    )
    np.testing.assert_array_equal(mpimg.imread(a), mpimg.imread(b))


def _coloured(pixels: np.ndarray, rgb, alpha: float = OVERLAY_ALPHA, tol=0.03) -> int:
    expected = np.asarray(rgb) * alpha  # blended over a black image (window puts it at 0)
    return int((np.abs(pixels[..., :3] - expected).max(-1) < tol).sum())


def test_png_size_overlay_colours_and_a_row_through_the_smallest_structure(tmp_path):
    image = np.full(SHAPE, -1000.0, np.float32)  # below the window: black
    _, mask = _scene()  # label 2 is small and far from label 1: the first row misses it
    labels = {1: "liver", 2: "lesion"}
    out = render_preview(image, mask, RAS, labels, tmp_path / "p.png", window=(40, 400), title="case_7")
    assert _png_size(out) == (1500, 850)  # two rows of three 4-inch panels, a 3-inch legend, a title band
    pixels = mpimg.imread(out)
    assert _coloured(pixels, label_colour(1, labels)) > 50  # filled
    assert _coloured(pixels, label_colour(1, labels), alpha=1.0) > 50  # outlined
    first, second = pixels[:450, :1200], pixels[450:, :1200]  # title band and rows; the legend to the right
    assert _coloured(second, label_colour(2, labels), alpha=1.0) > 10
    assert _coloured(first, label_colour(2, labels), alpha=1.0) == 0

    near = mask.copy()
    near[2:5, 2:5, 2:5] = 0
    near[24:27, 21:24, 27] = 2  # beside label 1, in its axial slice: one row shows both
    one_row = render_preview(image, near, RAS, labels, tmp_path / "n.png", window=(40, 400))
    assert _png_size(one_row) == (1500, 450)
    assert _coloured(mpimg.imread(one_row)[:, :1200], label_colour(2, labels), alpha=1.0) > 0

    empty = render_preview(image, np.zeros_like(mask), RAS, labels, tmp_path / "e.png", window=(40, 400))
    assert _png_size(empty) == (1500, 450)
    chroma = np.ptp(mpimg.imread(empty)[..., :3], axis=-1)
    assert chroma.max() < 0.02  # nothing coloured at all without a mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.png", "n.png", "p.png"]


def test_colours_are_okabe_ito_by_rank_and_distinct():
    assert [label_colour(i) for i in range(1, 8)] == [matplotlib.colors.to_rgb(c) for c in OKABE_ITO]
    assert label_colour(5, {5: "liver", 9: "lesion"}) == label_colour(1)  # rank among the declared labels
    assert label_colour(9, [5, 9]) == label_colour(2)
    assert label_colour(3, [5, 9]) == label_colour(3)  # undeclared: by id
    rgb = np.array([label_colour(i) for i in range(1, 12)])
    gaps = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + np.eye(len(rgb))
    assert gaps.min() > 0.2  # no two of the first eleven labels look alike


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
    assert _png_size(out) == (700, 450)
    assert _coloured(mpimg.imread(out), label_colour(1)) > 20
    panels = orthogonal_slices(image[:, :, 27], mask[:, :, 27], np.diag([0.5, 0.7, 1.0, 1.0]))
    assert [p.name for p in panels] == ["axial"] and panels[0].aspect == pytest.approx(0.7 / 0.5)
    assert (panels[0].axis, panels[0].index, panels[0].size) == (2, 0, 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"path": "p.jpg"}, "must end with .png"),
        ({"window": (40, 0)}, "width > 0"),
        ({"mask": np.zeros((3, 3, 3), np.uint8)}, "must equal mask shape"),
        ({"mask": np.full(SHAPE, 0.5, np.float32)}, "integer labels"),
        ({"label": 3}, "label 3 is not in the mask"),
    ],
)
def test_input_errors(tmp_path, kwargs, match):
    image, mask = _scene()
    args = {"image": image, "mask": mask, "affine": RAS, "labels": {1: "a"}, "path": "p.png", "window": None}
    args.update(kwargs)
    args["path"] = tmp_path / args["path"]
    with pytest.raises(ValueError, match=match):
        if "label" in args:
            orthogonal_slices(args["image"], args["mask"], args["affine"], label=args["label"])
        render_preview(**args)
    assert not list(tmp_path.iterdir())


def _old_orthogonal_slices(image: np.ndarray, mask: np.ndarray, affine: np.ndarray, label: int | None = None):
    """The previous algorithm: reorient whole volumes to RAS, then the structure's voxel nearest its centroid
    (``label``, default the largest)."""
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
        inside = lab == (int(np.argmax(counts)) if label is None else label)
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
@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_same_panels_as_whole_volume_reorientation(affine_name, shape, which, monkeypatch):
    monkeypatch.setattr("pipeline.outputs.preview_window.SLAB_VOXELS", 700)  # several slabs even on tiny volumes
    affine = AFFINES[affine_name]
    image = np.random.default_rng(3).normal(0, 100, shape)  # float64: panels are float32 as before
    for volume_name, mask in _label_volumes(shape).items():
        counts = np.bincount(mask.ravel().astype(np.int64))
        present = np.flatnonzero(counts[1:]) + 1
        if which == "smallest" and not present.size:
            continue
        label = None if which == "largest" else int(present[np.argmin(counts[present])])
        new = orthogonal_slices(image, mask, affine, label=label)
        old = _old_orthogonal_slices(image, mask, affine, label=label)
        assert [p.name for p in new] == [p[0] for p in old], volume_name
        for panel, (_, old_img, old_lab, old_aspect) in zip(new, old, strict=True):
            name = panel.name
            assert panel.image.dtype == old_img.dtype and panel.mask.dtype == old_lab.dtype, (
                volume_name,
                name,
            )
            np.testing.assert_array_equal(panel.image, old_img, err_msg=f"{volume_name} {name}")
            np.testing.assert_array_equal(panel.mask, old_lab, err_msg=f"{volume_name} {name}")
            assert panel.aspect == old_aspect, (volume_name, name)


def _mr_like(shape=(40, 44, 24), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """An MR-like head: zero background, an ellipsoid of tissue 150-1150 (arbitrary units) with noise, and a
    bright lesion labelled 1."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    inside = (grid**2).sum(0) < 0.8
    image = np.where(inside, 650 + 500 * grid[0] * grid[1] / 0.8, 0.0)
    image = np.where(inside, image + np.random.default_rng(seed).normal(0, 40, shape), 0.0).astype(np.float32)
    mask = np.zeros(shape, np.uint8)
    mask[18:24, 20:26, 10:14] = 1
    image[mask == 1] += 600.0
    return image, mask


def test_percentile_window_of_the_body_matches_numpy_slab_by_slab(monkeypatch):
    image, _ = _mr_like()
    image[0, 0, 0] = np.nan  # ignored
    monkeypatch.setattr("pipeline.outputs.preview_window.SLAB_VOXELS", 500)  # many slabs
    level, width = percentile_window(image)
    body = image[np.isfinite(image) & (image != 0)]
    vmin, vmax = level - width / 2, level + width / 2
    assert np.mean(body < vmin) == pytest.approx(0.005, abs=1e-3)  # 0.5 % of the body below, 0.5 % above
    assert np.mean(body > vmax) == pytest.approx(0.005, abs=1e-3)
    bin_width = float(body.max() - body.min()) / HISTOGRAM_BINS
    assert vmin == pytest.approx(float(np.percentile(body, 0.5)), abs=0.002 * width + bin_width)
    assert vmin > 0  # the zero background is not in the window


@pytest.mark.parametrize(
    "image, window",
    [
        (np.zeros((4, 4, 4)), (0.5, 1.0)),
        (np.full((4, 4, 4), 7.0), (7.5, 1.0)),
        (np.full((4, 4, 4), np.nan), (0.5, 1.0)),
    ],
)
def test_percentile_window_of_constant_images_has_positive_width(image, window):
    assert percentile_window(image) == pytest.approx(window)


@pytest.mark.parametrize(
    "modality, expected",
    [("CT", (40.0, 400.0)), ("ct", (40.0, 400.0)), ("", (40.0, 400.0)), (None, (40.0, 400.0)), ("MR", None),
     ("PT", None)],
)  # fmt: skip
def test_preview_window_keeps_the_ct_window_for_ct_only(modality, expected):
    assert preview_window(modality, (40.0, 400.0)) == expected


def _grey_levels(png, region=(slice(100, 440), slice(0, 400))) -> np.ndarray:
    """The grey pixels (no overlay colour) of the first (axial) panel, below its title."""
    pixels = mpimg.imread(png)[region][..., :3]
    grey = np.ptp(pixels, axis=-1) < 1e-6
    return pixels[..., 0][grey]


def test_mr_preview_shows_grey_levels_where_a_ct_window_is_flat(tmp_path):
    image, mask = _mr_like()
    mr = render_preview(
        image, mask, RAS, {1: "lesion"}, tmp_path / "mr.png", window=preview_window("MR", (40, 400))
    )
    body = _grey_levels(mr)
    body = body[body > 0.1]  # the background is black
    assert len(np.unique(np.round(body * 255))) > 60 and np.ptp(np.percentile(body, [5, 95])) > 0.05
    flat = render_preview(image, mask, RAS, {1: "lesion"}, tmp_path / "ct.png", window=(40, 400))
    body = _grey_levels(flat)
    assert np.unique(np.round(body[body > 0.5] * 255)).tolist() == [255]  # all tissue white: the old picture
