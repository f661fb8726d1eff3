"""The registration figure in the layout of the paper's Fig. 2 (Van Houtte et al. 2022).

Panels, drawn with matplotlib (Agg, no display needed):

(a) each input radiograph with the contour of the registered atlas's DRR silhouette (red) and of
    the true femur's silhouette (cyan); a silhouette is the mask rule of
    :func:`biplanar.data.masks.femur_masks` (femur path length > 1 mm along the pixel's ray);
(b) a coronal slice of the warped atlas with the deformation grid: the lines of constant atlas
    coordinate ``x + u_x`` and ``z + u_z`` (every :data:`GRID_STEP_MM`), i.e. a regular grid of
    the atlas carried along with the image by the in-plane displacement;
(c) the predicted femur label (red contour) over the true one (blue, filled) on a coronal and an
    axial slice;
(d) the surface of the predicted femur coloured by each vertex's distance (mm) to the true
    surface (:func:`biplanar.evaluation.metrics.point_surface_distances_mm`); the colour scale ends
    at the 99th percentile of the distances, the title gives their mean and maximum.

Slices are shown in the radiological convention: the patient's right on the viewer's left,
superior (coronal) and anterior (axial) up. The coronal slice passes through the true femur's
centroid, the axial slice through the true femur's largest cross-section. Volumes must be on an
axis-aligned grid (a diagonal affine: the grid presets and the atlas).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from biplanar.data.masks import femur_masks
from biplanar.errors import InputError
from biplanar.evaluation.metrics import point_surface_distances_mm
from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.atomic import atomic_path
from biplanar.io.geometry_file import read_geometry
from biplanar.io.images import read_image, window
from biplanar.io.mesh import label_surface
from biplanar.io.volumes import read_volume

GRID_STEP_MM = 10.0  # spacing of the deformation grid lines, mm
SILHOUETTE_SAMPLES = 128  # ProST samples per ray for the silhouettes
PREDICTED_COLOUR, TRUE_COLOUR, GRID_COLOUR = "#ff3030", "#30c0ff", "#ffd000"
HU_WINDOW = (-200.0, 1500.0)  # grey window of the warped atlas, HU
FIGURE_SIZE_IN = (15.0, 10.0)
DPI = 110
MESH_VIEW = {"elev": 10.0, "azim": 90.0}  # camera at +y (anterior): patient's right on the left


@dataclass(frozen=True)
class FigureData:
    """Everything the figure shows.

    Attributes:
        grid: the atlas grid (axis-aligned, world RAS+ mm) of every volume below.
        views: view name -> calibrated view (``AP`` and ``LAT``, or any others).
        radiographs: view name -> ``(rows, cols)`` input radiograph (unmasked, any units).
        warped_atlas_hu: ``(I, J, K)`` the atlas warped by the total transform, HU.
        displacement_mm: ``(3, I, J, K)`` the total transform's displacement, world mm
            components ``(x, y, z)``: ``warped(p) = atlas(p + displacement(p))``.
        predicted_labels: ``(I, J, K)`` bool, the warped atlas femur.
        true_labels: ``(I, J, K)`` bool, the true femur.
    """

    grid: VolumeGrid
    views: dict[str, ProjectionView]
    radiographs: dict[str, np.ndarray]
    warped_atlas_hu: np.ndarray
    displacement_mm: np.ndarray
    predicted_labels: np.ndarray
    true_labels: np.ndarray

    def __post_init__(self) -> None:
        shape = self.grid.shape
        for name in ("warped_atlas_hu", "predicted_labels", "true_labels"):
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"{name}: expected shape {shape}, got {tuple(getattr(self, name).shape)}")
        if tuple(self.displacement_mm.shape) != (3, *shape):
            raise ValueError(
                f"displacement_mm: expected shape (3, {', '.join(map(str, shape))}), "
                f"got {tuple(self.displacement_mm.shape)}"
            )
        linear = self.grid.affine[:3, :3]
        if not np.allclose(linear, np.diag(np.diag(linear))):
            raise ValueError("grid: expected an axis-aligned (diagonal) affine")
        for name, view in self.views.items():
            if self.radiographs[name].shape != view.image_shape:
                raise ValueError(
                    f"radiographs[{name!r}]: expected shape {view.image_shape}, got {self.radiographs[name].shape}"
                )


def load_figure_data(
    registration_dir: str | Path,
    geometry_path: str | Path,
    radiograph_paths: dict[str, str | Path],
    truth_labels_path: str | Path,
) -> FigureData:
    """Read a ``register`` output folder and its inputs into :class:`FigureData`.

    Args:
        registration_dir: holds ``warped_atlas.nii.gz``, ``warped_labels.nii.gz``,
            ``displacement.nii.gz``.
        geometry_path: the ``geometry.json`` the registration used (carm isocentres default to
            the centre of the atlas grid).
        radiograph_paths: view name -> radiograph file.
        truth_labels_path: the true label map (1 = femur) on the atlas grid.
    """

    folder = Path(registration_dir)
    warped_hu, grid = read_volume(folder / "warped_atlas.nii.gz")
    warped_labels, _ = read_volume(folder / "warped_labels.nii.gz")
    truth, _ = read_volume(truth_labels_path)
    views = read_geometry(geometry_path, grid.centre_world)
    return FigureData(
        grid,
        {name: views[name] for name in radiograph_paths},
        {name: read_image(path) for name, path in radiograph_paths.items()},
        np.asarray(warped_hu, dtype=np.float32),
        read_displacement(folder / "displacement.nii.gz", grid),
        np.round(warped_labels) == 1,
        np.round(truth) == 1,
    )


def read_displacement(path: Path, grid: VolumeGrid) -> np.ndarray:
    """``(3, I, J, K)`` float32 world-mm displacement from ``register``'s ``(I, J, K, 1, 3)`` NIfTI file."""

    image = nib.load(str(path))
    if not isinstance(image, nib.spatialimages.SpatialImage):
        raise InputError(f"{path}: expected a NIfTI image, got {type(image).__name__}")
    vectors = np.asarray(image.dataobj, dtype=np.float32)
    if vectors.shape != (*grid.shape, 1, 3):
        raise InputError(f"{path}: expected shape {(*grid.shape, 1, 3)}, got {vectors.shape}")
    # (I, J, K, 1, 3) NIfTI vector layout -> (3, I, J, K): world components first.
    return np.moveaxis(vectors[:, :, :, 0, :], -1, 0)


def _axis_centres(grid: VolumeGrid, axis: int) -> np.ndarray:
    """World coordinate (mm) along world axis ``axis`` of the voxel centres along array axis ``axis``."""
    return grid.affine[axis, axis] * np.arange(grid.shape[axis]) + grid.affine[axis, 3]


def _extent(horizontal: np.ndarray, vertical: np.ndarray) -> tuple[float, float, float, float]:
    """imshow extent (left, right, bottom, top) in mm for voxel centres ``horizontal``, ``vertical``
    (an array shown with ``origin="lower"``: row 0 at the bottom)."""
    dh = (horizontal[-1] - horizontal[0]) / max(len(horizontal) - 1, 1)
    dv = (vertical[-1] - vertical[0]) / max(len(vertical) - 1, 1)
    return (horizontal[0] - dh / 2, horizontal[-1] + dh / 2, vertical[0] - dv / 2, vertical[-1] + dv / 2)


def _radiological(axes, x_mm: np.ndarray, vertical_mm: np.ndarray, vertical_name: str) -> None:
    """Patient's right (+x) on the viewer's left, the vertical axis increasing upwards; mm labels."""
    axes.set_xlim(max(x_mm[0], x_mm[-1]), min(x_mm[0], x_mm[-1]))
    axes.set_ylim(min(vertical_mm[0], vertical_mm[-1]), max(vertical_mm[0], vertical_mm[-1]))
    axes.set_aspect("equal")
    axes.tick_params(labelsize=7)
    axes.set_xlabel("x (mm, patient's right to the left)", fontsize=7)
    axes.set_ylabel(f"{vertical_name} (mm)", fontsize=7)


def slice_indices(true_labels: np.ndarray) -> tuple[int, int]:
    """``(j, k)``: the coronal slice through the true femur's centroid and the axial slice with its
    largest cross-section (the middle of the volume for an empty label)."""
    if not true_labels.any():
        return true_labels.shape[1] // 2, true_labels.shape[2] // 2
    j = round(float(np.argwhere(true_labels)[:, 1].mean()))
    k = int(np.argmax(true_labels.sum(axis=(0, 1))))
    return j, k


def _silhouettes(data: FigureData) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Predicted and true 2D silhouettes per view, ``(rows, cols)`` float 0/1."""

    predicted = femur_masks(data.predicted_labels.astype(np.uint8), data.grid, data.views, SILHOUETTE_SAMPLES)
    true = femur_masks(data.true_labels.astype(np.uint8), data.grid, data.views, SILHOUETTE_SAMPLES)
    return predicted, true


def _draw_radiograph(axes, name: str, radiograph: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> None:
    """Panel (a): a radiograph with the two silhouette contours (pixel centres at (col, row))."""

    axes.imshow(window(radiograph), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    for mask, colour in ((truth, TRUE_COLOUR), (predicted, PREDICTED_COLOUR)):
        if mask.any() and not mask.all():
            axes.contour(mask, levels=[0.5], colors=colour, linewidths=1.2)
    axes.set_title(f"(a) {name}: registered (red), true (cyan)", fontsize=9)
    axes.set_axis_off()


def _grey(axes, image_hv: np.ndarray, horizontal: np.ndarray, vertical: np.ndarray) -> None:
    """An HU slice indexed ``(horizontal, vertical)`` in grey on mm axes."""
    # (horizontal, vertical) -> (vertical, horizontal): imshow rows are the vertical axis.
    axes.imshow(
        image_hv.T,
        cmap="gray",
        vmin=HU_WINDOW[0],
        vmax=HU_WINDOW[1],
        origin="lower",
        extent=_extent(horizontal, vertical),
        interpolation="bilinear",
    )


def _draw_deformation(axes, data: FigureData, j: int) -> None:
    """Panel (b): coronal slice ``j`` of the warped atlas with the carried atlas grid."""
    x_mm, z_mm = _axis_centres(data.grid, 0), _axis_centres(data.grid, 2)
    _grey(axes, data.warped_atlas_hu[:, j, :], x_mm, z_mm)
    # Atlas coordinates of each voxel of the slice, (I, K): p + u(p), in-plane components only.
    atlas_x = x_mm[:, None] + data.displacement_mm[0, :, j, :]
    atlas_z = z_mm[None, :] + data.displacement_mm[2, :, j, :]
    for field in (atlas_x, atlas_z):
        levels = np.arange(np.floor(field.min() / GRID_STEP_MM), np.ceil(field.max() / GRID_STEP_MM) + 1) * GRID_STEP_MM
        # contour takes Z indexed (rows = vertical, cols = horizontal): (I, K) -> (K, I).
        axes.contour(x_mm, z_mm, field.T, levels=levels, colors=GRID_COLOUR, linewidths=0.5, linestyles="solid")
    _radiological(axes, x_mm, z_mm, "z")
    axes.set_title(
        f"(b) warped atlas, coronal y = {_axis_centres(data.grid, 1)[j]:.0f} mm, deformation grid", fontsize=9
    )


def _draw_labels(
    axes,
    background: np.ndarray,
    predicted: np.ndarray,
    truth: np.ndarray,
    horizontal: np.ndarray,
    vertical: np.ndarray,
    vertical_name: str,
    title: str,
) -> None:
    """Panel (c): the true label filled, the predicted label's contour, on a warped-atlas slice."""
    _grey(axes, background, horizontal, vertical)
    overlay = np.ma.masked_where(~truth.T, truth.T.astype(float))
    axes.imshow(
        overlay,
        cmap="Blues",
        vmin=0.0,
        vmax=1.5,
        alpha=0.55,
        origin="lower",
        extent=_extent(horizontal, vertical),
        interpolation="nearest",
    )
    if predicted.any() and not predicted.all():
        axes.contour(
            horizontal, vertical, predicted.T.astype(float), levels=[0.5], colors=PREDICTED_COLOUR, linewidths=1.0
        )
    _radiological(axes, horizontal, vertical, vertical_name)
    axes.set_title(title, fontsize=9)


def surface_errors(data: FigureData):
    """``(mesh, distances_mm)``: the predicted femur surface (world mm) and each vertex's distance
    to the true surface, mm."""

    predicted = label_surface(data.predicted_labels.astype(np.uint8), data.grid)
    truth = label_surface(data.true_labels.astype(np.uint8), data.grid)
    return predicted, point_surface_distances_mm(predicted.vertices, truth)


def _draw_surface(figure, axes, data: FigureData) -> None:
    """Panel (d): the predicted surface coloured by its distance to the true surface."""
    from matplotlib import cm, colormaps, colors  # lazy: matplotlib only for pictures
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection  # lazy: matplotlib only for pictures

    if not (data.predicted_labels.any() and data.true_labels.any()):
        axes.set_title("(d) no surface: an empty label", fontsize=9)
        return
    mesh, distances = surface_errors(data)
    norm = colors.Normalize(0.0, max(float(np.percentile(distances, 99)), 1e-3))
    face_distance = distances[mesh.faces].mean(axis=1)  # (F,) mm, mean of the face's vertices
    colormap = colormaps["magma"]
    collection = Poly3DCollection(mesh.triangles, facecolors=colormap(norm(face_distance)), linewidths=0.0)
    axes.add_collection3d(collection)
    low, high = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
    axes.set_xlim(low[0], high[0])
    axes.set_ylim(low[1], high[1])
    axes.set_zlim(low[2], high[2])
    axes.set_box_aspect(tuple(high - low))
    axes.view_init(**MESH_VIEW)
    axes.set_axis_off()
    mappable = cm.ScalarMappable(norm=norm, cmap=colormap)
    figure.colorbar(mappable, ax=axes, shrink=0.7, label="distance to the true surface (mm)")
    axes.set_title(f"(d) surface error: mean {distances.mean():.2f} mm, max {distances.max():.2f} mm", fontsize=9)


def write_registration_figure(path: str | Path, data: FigureData) -> Path:
    """Draw the Fig. 2-style figure (module doc) and write it as PNG, atomically.

    Args:
        path: the ``.png`` to write.
        data: the arrays it shows.

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: matplotlib only for pictures
    from matplotlib.figure import Figure  # lazy: matplotlib only for pictures

    figure = Figure(figsize=FIGURE_SIZE_IN, dpi=DPI, layout="constrained")
    panels = figure.add_gridspec(2, 4)
    predicted_2d, true_2d = _silhouettes(data)
    for column, name in enumerate(list(data.views)[:2]):
        _draw_radiograph(
            figure.add_subplot(panels[0, column]), name, data.radiographs[name], predicted_2d[name], true_2d[name]
        )
    j, k = slice_indices(data.true_labels)
    _draw_deformation(figure.add_subplot(panels[0, 2:]), data, j)
    x_mm, y_mm, z_mm = (_axis_centres(data.grid, axis) for axis in range(3))
    _draw_labels(
        figure.add_subplot(panels[1, 0]),
        data.warped_atlas_hu[:, j, :],
        data.predicted_labels[:, j, :],
        data.true_labels[:, j, :],
        x_mm,
        z_mm,
        "z",
        "(c) coronal: predicted (red) over true (blue)",
    )
    _draw_labels(
        figure.add_subplot(panels[1, 1]),
        data.warped_atlas_hu[:, :, k],
        data.predicted_labels[:, :, k],
        data.true_labels[:, :, k],
        x_mm,
        y_mm,
        "y",
        f"(c) axial z = {z_mm[k]:.0f} mm",
    )
    _draw_surface(figure, figure.add_subplot(panels[1, 2:], projection="3d"), data)
    canvas = FigureCanvasAgg(figure)
    path = Path(path)
    with atomic_path(path) as temporary:
        canvas.print_png(str(temporary))
    return path
