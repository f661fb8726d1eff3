"""Registration metrics: overlap (Dice, Jaccard), surface distances in mm (ASSD, HD95), 3D SSIM.

Label maps are binary ``(I, J, K)`` arrays (numpy or torch; bool or 0/1) on one voxel grid, in
NIfTI array order; ``spacing_mm`` is that grid's voxel size along ``(i, j, k)`` in mm, e.g.
:attr:`biplanar.geometry.VolumeGrid.spacing_mm`. The distances scale each voxel-index axis by its
spacing, which is exact for any grid whose affine has orthogonal columns (axis-aligned or rotated,
not sheared: ``VolumeGrid.from_spacing`` grids and ordinary CT NIfTI files).

Conventions, taken from MONAI 1.6.1 (``monai.metrics``), which computes the metrics:

- Surface of a mask: its *boundary voxels*, the foreground voxels with at least one 6-connected
  background neighbour (``mask XOR binary_erosion(mask)``, cross-shaped structuring element,
  outside the volume counted as background). Surfaces are sets of voxel centres, so they lie
  inside the object by up to one voxel step.
- Surface distance of a boundary voxel: the Euclidean distance in mm between its centre and the
  nearest boundary-voxel centre of the other mask.

MONAI computes in float32, so values carry ~1e-7 relative rounding (Dice 0.8 reads 0.80000001).

Empty masks (no foreground voxel) give, instead of MONAI's mixed nan/inf, one documented result:

==========================  =====  =======  =======  =======
case                        dice   jaccard  assd_mm  hd95_mm
==========================  =====  =======  =======  =======
exactly one mask empty      0.0    0.0      inf      inf
both masks empty            1.0    1.0      nan      nan
==========================  =====  =======  =======  =======
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

HD_PERCENTILE = 95.0
SSIM_WINDOW_VOX = 11

LabelMap = np.ndarray | Tensor
Spacing = Sequence[float] | np.ndarray


def _cpu_tensor(array: LabelMap) -> Tensor:
    """A numpy array or tensor as a detached CPU tensor (same shape and dtype)."""
    if isinstance(array, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(array))
    return array.detach().cpu()


def _as_mask(label_map: LabelMap, name: str) -> Tensor:
    """``(I, J, K)`` binary numpy/torch -> ``(1, 1, I, J, K)`` float32 CPU tensor of 0/1."""
    mask = _cpu_tensor(label_map)
    if mask.dim() != 3:
        raise ValueError(f"{name}: expected a label map of shape (I, J, K), got {tuple(mask.shape)}")
    values = torch.unique(mask)
    if not bool(((values == 0) | (values == 1)).all()):
        raise ValueError(f"{name}: expected a binary label map (0/1 or bool), got values {values.tolist()[:5]}")
    # (I, J, K) -> (B=1, C=1, I, J, K)
    return mask.to(torch.float32)[None, None]


def _mask_pair(predicted: LabelMap, truth: LabelMap) -> tuple[Tensor, Tensor]:
    """Both label maps as ``(1, 1, I, J, K)`` masks, checked to share one grid."""
    predicted_mask, truth_mask = _as_mask(predicted, "predicted"), _as_mask(truth, "truth")
    if predicted_mask.shape != truth_mask.shape:
        raise ValueError(
            f"predicted and truth: expected the same shape, got {tuple(predicted_mask.shape[2:])} "
            f"and {tuple(truth_mask.shape[2:])}"
        )
    return predicted_mask, truth_mask


def _spacing_tuple(spacing_mm: Spacing) -> tuple[float, float, float]:
    """``(3,)`` positive voxel spacing in mm as a tuple of floats."""
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if spacing.shape != (3,) or not bool((spacing > 0).all()):
        raise ValueError(f"spacing_mm: expected 3 positive sizes in mm, got {spacing.tolist()}")
    return float(spacing[0]), float(spacing[1]), float(spacing[2])


def _empty_case_distance(predicted_mask: Tensor, truth_mask: Tensor) -> float | None:
    """The documented distance for empty masks (inf if one is empty, nan if both), else None."""
    n_empty = int(not predicted_mask.any()) + int(not truth_mask.any())
    return {0: None, 1: float("inf"), 2: float("nan")}[n_empty]


def _monai_surface_call(
    function: Callable[..., Tensor], predicted_mask: Tensor, truth_mask: Tensor, spacing_mm: Spacing, **kwargs
) -> float:
    """A MONAI surface-distance metric on one binary pair, in mm, with the empty cases handled."""
    spacing = _spacing_tuple(spacing_mm)
    empty_case = _empty_case_distance(predicted_mask, truth_mask)
    if empty_case is not None:
        return empty_case
    with warnings.catch_warnings():
        # MONAI 1.6 passes its own deprecated ``always_return_as_numpy`` argument internally.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        value = function(predicted_mask, truth_mask, include_background=True, spacing=spacing, **kwargs)
    return float(value.item())


def dice(predicted: LabelMap, truth: LabelMap) -> float:
    """Dice overlap ``2 |P ∩ T| / (|P| + |T|)`` in voxel counts (MONAI ``compute_dice``).

    Spacing does not enter: on one grid every voxel has the same volume, which cancels.

    Args:
        predicted, truth: ``(I, J, K)`` binary label maps on the same grid.

    Returns:
        In ``[0, 1]``; 1.0 when both masks are empty, 0.0 when exactly one is.
    """
    from monai.metrics import compute_dice  # lazy: monai costs seconds of start-up

    predicted_mask, truth_mask = _mask_pair(predicted, truth)
    # ignore_empty=False: an empty truth scores 1.0 against an empty prediction, 0.0 otherwise.
    return float(compute_dice(predicted_mask, truth_mask, include_background=True, ignore_empty=False).item())


def jaccard_from_dice(dice_value: float) -> float:
    """Jaccard index ``|P ∩ T| / |P ∪ T|`` from Dice D: ``J = D / (2 - D)`` (MONAI has no Jaccard)."""
    return dice_value / (2.0 - dice_value)


def jaccard(predicted: LabelMap, truth: LabelMap) -> float:
    """Jaccard index ``|P ∩ T| / |P ∪ T|`` (intersection over union) of two ``(I, J, K)`` binary label maps."""
    return jaccard_from_dice(dice(predicted, truth))


def assd_mm(predicted: LabelMap, truth: LabelMap, spacing_mm: Spacing) -> float:
    """Average symmetric surface distance in mm (MONAI ``compute_average_surface_distance``, symmetric).

    The mean, over the boundary voxels of *both* masks pooled, of each one's distance to the nearest
    boundary voxel of the other mask: ``(sum_{p in dP} d(p, dT) + sum_{t in dT} d(t, dP)) / (|dP| + |dT|)``.
    Surfaces and distances as in the module docstring.

    Args:
        predicted, truth: ``(I, J, K)`` binary label maps on the same grid.
        spacing_mm: ``(3,)`` voxel size along ``(i, j, k)`` in mm.

    Returns:
        mm; inf when exactly one mask is empty, nan when both are.
    """
    from monai.metrics import compute_average_surface_distance  # lazy: monai costs seconds of start-up

    predicted_mask, truth_mask = _mask_pair(predicted, truth)
    return _monai_surface_call(compute_average_surface_distance, predicted_mask, truth_mask, spacing_mm, symmetric=True)


def hd95_mm(predicted: LabelMap, truth: LabelMap, spacing_mm: Spacing) -> float:
    """95th-percentile Hausdorff distance in mm (MONAI ``compute_hausdorff_distance``, percentile=95).

    MONAI's definition: ``max(q95{d(p, dT) : p in dP}, q95{d(t, dP) : t in dT})``, the larger of the
    two *directed* 95th percentiles (``torch.quantile``, linear interpolation), not the percentile
    of the pooled distances. Surfaces and distances as in the module docstring; arguments, unit
    (mm) and empty-mask values as :func:`assd_mm`.
    """
    from monai.metrics import compute_hausdorff_distance  # lazy: monai costs seconds of start-up

    predicted_mask, truth_mask = _mask_pair(predicted, truth)
    return _monai_surface_call(
        compute_hausdorff_distance, predicted_mask, truth_mask, spacing_mm, percentile=HD_PERCENTILE
    )


def segmentation_metrics(predicted: LabelMap, truth: LabelMap, spacing_mm: Spacing) -> dict[str, float]:
    """All overlap and surface metrics of a predicted label map against the truth.

    Args:
        predicted: ``(I, J, K)`` binary label map, e.g. the warped atlas femur label.
        truth: ``(I, J, K)`` binary label map on the same grid, e.g. the patient's femur label.
        spacing_mm: ``(3,)`` voxel size along ``(i, j, k)`` in mm (``VolumeGrid.spacing_mm``).

    Returns:
        ``{"dice", "jaccard", "assd_mm", "hd95_mm"}`` as floats (definitions and empty-mask values:
        see :func:`dice`, :func:`jaccard`, :func:`assd_mm`, :func:`hd95_mm`).
    """
    dice_value = dice(predicted, truth)
    return {
        "dice": dice_value,
        "jaccard": jaccard_from_dice(dice_value),
        "assd_mm": assd_mm(predicted, truth, spacing_mm),
        "hd95_mm": hd95_mm(predicted, truth, spacing_mm),
    }


def image_ssim(a: LabelMap, b: LabelMap, data_range: float) -> float:
    """3D structural similarity (MONAI ``SSIMMetric``, spatial_dims=3) of two volumes on one grid.

    Wang et al. 2004 SSIM with an 11^3 Gaussian window (sigma 1.5 voxels, isotropic in voxels),
    constants ``c1 = (0.01 data_range)^2``, ``c2 = (0.03 data_range)^2``, averaged over the
    windows that fit entirely inside the volume (no padding).

    Args:
        a: ``(I, J, K)`` image, e.g. the warped atlas CT (any intensity unit, e.g. HU).
        b: ``(I, J, K)`` image in the same unit on the same grid, e.g. the ground-truth CT.
        data_range: the intensity range of the images, in their unit (e.g. 1.0 or max - min).

    Returns:
        SSIM in ``[-1, 1]``; 1.0 for identical volumes.
    """
    from monai.metrics import SSIMMetric  # lazy: monai costs seconds of start-up

    a_t, b_t = _cpu_tensor(a), _cpu_tensor(b)
    if a_t.dim() != 3 or a_t.shape != b_t.shape:
        raise ValueError(
            f"a and b: expected two volumes of one shape (I, J, K), got {tuple(a_t.shape)} and {tuple(b_t.shape)}"
        )
    if min(a_t.shape) < SSIM_WINDOW_VOX:
        raise ValueError(
            f"a and b: expected every side >= {SSIM_WINDOW_VOX} voxels (the SSIM window), got {tuple(a_t.shape)}"
        )
    if not data_range > 0:
        raise ValueError(f"data_range: expected a positive intensity range, got {data_range}")
    metric = SSIMMetric(spatial_dims=3, data_range=float(data_range), win_size=SSIM_WINDOW_VOX)
    # (I, J, K) -> (B=1, C=1, I, J, K)
    value = metric(a_t.to(torch.float32)[None, None], b_t.to(torch.float32)[None, None])
    if not isinstance(value, Tensor):  # monai types the result as a tensor or a sequence of them
        raise TypeError(f"SSIMMetric: expected a tensor, got {type(value).__name__}")
    return float(value.item())


NEAREST_VERTEX_CANDIDATES = 8  # surface vertices whose faces are searched for each point's closest point


def point_surface_distances_mm(points_world: np.ndarray, surface) -> np.ndarray:
    """Distance in mm from each point to a triangle mesh (e.g. a predicted surface's vertices to the
    true surface, as in the figure's surface-error panel).

    Each point's distance is the exact point-to-triangle distance minimised over the faces around
    its :data:`NEAREST_VERTEX_CANDIDATES` nearest mesh vertices (a k-d tree), which hold the
    closest face on meshes of near-uniform triangles such as marching-cubes surfaces.

    Args:
        points_world: ``(N, 3)`` world mm.
        surface: a :class:`~biplanar.io.mesh.TriangleMesh` (or a :class:`trimesh.Trimesh`), world mm.

    Returns:
        ``(N,)`` float64 distances, mm (unsigned).
    """
    import trimesh  # lazy: trimesh (and SciPy's spatial) only where meshes are compared
    from scipy.spatial import cKDTree
    from trimesh.triangles import closest_point

    points = np.asarray(points_world, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points_world: expected shape (N, 3), got {points.shape}")
    if len(surface.faces) == 0:
        raise ValueError("surface: expected a mesh with at least one face")
    surface = trimesh.Trimesh(surface.vertices, surface.faces, process=False)
    k = min(NEAREST_VERTEX_CANDIDATES, len(surface.vertices))
    _, nearest = cKDTree(surface.vertices).query(points, k=k)  # (N, k) vertex indices
    faces = surface.vertex_faces[nearest.reshape(len(points), k)].reshape(len(points), -1)  # (N, k * degree), -1 pads
    valid = faces >= 0
    rows, columns = np.nonzero(valid)
    triangles = surface.triangles[faces[rows, columns]]  # (M, 3, 3) world mm
    gaps = np.linalg.norm(closest_point(triangles, points[rows]) - points[rows], axis=1)
    distances = np.full(faces.shape, np.inf)
    distances[rows, columns] = gaps
    return distances.min(axis=1)
