"""What ``register`` reads, and how it brings a clinic's radiographs to what the network was trained on.

For each view (docs/contract.md section 7), in the order the data flows:

1. **Read** the radiograph as line integrals: a DICOM file through its tags
   (:func:`biplanar.io.dicom.read_dicom_radiograph`: rescale, photometric interpretation,
   ``LIN`` / ``LOG``, orientation flips), an array file (``.npy``, ``.tif``, ``.png``) by the
   ``intensity`` route (``auto`` tries both readings and keeps the one that correlates better
   with the atlas's DRR, :func:`choose_intensity_route`). Non-radiographs are refused
   (:func:`biplanar.physics.intensity.check_radiograph`), and so is a radiograph that
   anti-correlates with the atlas's DRR at its view (an inverted image, bone dark).
2. **Geometry**: the geometry file's view when one is given, else the DICOM tags.
3. **Resample** onto the model's detector around the projection of the atlas centre, the projection
   matrix following exactly (:class:`biplanar.geometry.detector.DetectorResampling`).
4. **Mirror** a left femur into a right one (:class:`biplanar.geometry.mirror.SagittalMirror`).
5. **Masks**: the given ones (resampled and mirrored alike), or the bundled 2D segmentation network's
   on the resampled, mirrored radiograph. A view whose source is on the other side than the networks
   learnt (a PA, a LAT from the femur's lateral side: :mod:`biplanar.geometry.facing`) is segmented
   with its columns reversed and its mask reversed back.

:class:`RegistrationInputs` holds the result; its :meth:`~RegistrationInputs.record` is what
``report.json`` says was assumed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biplanar.data.atlas import FEMUR_LABEL, load_atlas
from biplanar.errors import InputError, require_choice
from biplanar.geometry.detector import DetectorResampling
from biplanar.geometry.facing import source_reversed
from biplanar.geometry.mirror import SIDES, SagittalMirror
from biplanar.geometry.presets import PAPER_SOURCE_DETECTOR_MM, PAPER_SOURCE_ISOCENTER_MM, VIEW_NAMES, biplanar_pair
from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.dicom import DicomRadiograph, dicom_view, read_dicom_radiograph
from biplanar.io.geometry_file import read_geometry, require_views
from biplanar.io.images import read_image
from biplanar.io.volumes import read_volume
from biplanar.physics.attenuation import hu_to_mu
from biplanar.physics.intensity import INTENSITY_ROUTES, check_radiograph, transmission_to_line_integral

MASK_THRESHOLD = 0.5  # a resampled mask pixel is femur above this fraction of its footprint
MIN_ATLAS_NCC = 0.0  # a radiograph below this NCC with the atlas's DRR at its view is refused as inverted
IDENTITY_TOLERANCE_PX = 1e-3  # a pixel map this close to the identity is none (no resampling)
SIDE_LETTERS = {"L": "left", "R": "right"}


@dataclass(frozen=True)
class ViewInput:
    """One radiograph as the user gave it and as the network sees it.

    Attributes:
        name: ``"AP"`` or ``"LAT"``.
        path: the radiograph file.
        user_view: the view of the user's detector, patient world (after any DICOM flips).
        user_image: ``(rows, cols)`` float32 line integrals on the user's detector, in the contract's
            orientation (docs/contract.md section 2).
        view: the view on the model's detector, in the registration world (mirrored for a left femur).
        image: ``(rows_m, cols_m)`` float32 line integrals on the model's detector, registration world.
        mask: ``(rows_m, cols_m)`` bool femur mask the network uses, registration world.
        resampling: the change of detector, or ``None`` when the user's detector is the model's.
        flips: numpy axes flipped from the file to the contract's orientation (DICOM only).
        assumptions: JSON-ready record of the intensity route, geometry source, resampling, flips.
    """

    name: str
    path: Path
    user_view: ProjectionView
    user_image: np.ndarray
    view: ProjectionView
    image: np.ndarray
    mask: np.ndarray
    resampling: DetectorResampling | None
    flips: tuple[int, ...]
    assumptions: dict[str, Any]

    def mask_in_file_pixels(self, mirror: SagittalMirror | None) -> np.ndarray:
        """The mask the network used, on the file's own pixels and orientation (nearest model pixel)."""
        mask = self.mask if mirror is None else SagittalMirror.image(self.mask)
        if self.resampling is not None:
            mask = self.resampling.nearest_to_user(mask)
        return np.ascontiguousarray(np.flip(mask, self.flips)) if self.flips else mask


@dataclass(frozen=True)
class RegistrationInputs:
    """Both views ready for the network, and what was assumed on the way.

    Attributes:
        views: ``{"AP": ViewInput, "LAT": ViewInput}``.
        side: ``"right"`` or ``"left"``.
        side_source: where the side came from (``"--side"``, a DICOM tag, ``"default"``).
        mirror: the mirror of a left femur (``None`` for a right one).
        masks: ``"given"`` or ``"segmented"``.
    """

    views: dict[str, ViewInput]
    side: str
    side_source: str
    mirror: SagittalMirror | None
    masks: str

    def network_views(self) -> dict[str, ProjectionView]:
        """View name -> the view on the model's detector, registration world."""
        return {name: self.views[name].view for name in VIEW_NAMES}

    def radiographs(self) -> dict[str, np.ndarray]:
        """View name -> ``(rows_m, cols_m)`` float32 line integrals on the model's detector, unmasked."""
        return {name: self.views[name].image for name in VIEW_NAMES}

    def femur_masks(self) -> dict[str, np.ndarray]:
        """View name -> ``(rows_m, cols_m)`` bool femur mask (given or segmented) on the model's detector."""
        return {name: self.views[name].mask for name in VIEW_NAMES}

    def network_inputs(self) -> dict[str, np.ndarray]:
        """View name -> radiograph x mask, what the network was trained on."""
        return {name: self.views[name].image * self.views[name].mask for name in VIEW_NAMES}

    def patient_volume(self, volume: np.ndarray) -> np.ndarray:
        """An ``(I, J, K, ...)`` volume of the registration world on the atlas grid, in the patient's world."""
        return volume if self.mirror is None else self.mirror.volume(volume)

    def record(self) -> dict[str, Any]:
        """``report.json``'s ``inputs.assumptions``: side, masks and each view's assumptions."""
        return {
            "side": self.side,
            "side_source": self.side_source,
            "masks": self.masks,
            "views": {name: self.views[name].assumptions for name in VIEW_NAMES},
        }


@dataclass(frozen=True)
class _Radiograph:
    """A radiograph file read (step 1 of the module doc), before its geometry is known."""

    values: np.ndarray  # (rows, cols) float32, as read (DICOM: already line integrals, flipped)
    dicom: DicomRadiograph | None


def _read_radiograph(path: Path, intensity: str, air_level: float | None) -> _Radiograph:
    if path.suffix.lower() == ".dcm":
        dicom = read_dicom_radiograph(path, intensity, air_level)
        return _Radiograph(dicom.image, dicom)
    return _Radiograph(read_image(path), None)


def choose_intensity_route(
    values: np.ndarray, atlas_drr: np.ndarray, resample: Callable[[np.ndarray], np.ndarray]
) -> str:
    """The reading of an array radiograph (``intensity="auto"``) that matches the atlas's DRR best.

    Both readings, ``line-integral`` (the values as they are) and ``transmission``
    (``-log(I / I_air)``), are resampled onto the model's detector and correlated (NCC) with the
    DRR of the atlas at the stated view; the higher correlation wins. An image with a value <= 0
    cannot be a transmission image.

    Args:
        values: ``(rows, cols)`` the file's values on the user's detector.
        atlas_drr: ``(rows_m, cols_m)`` line integrals of the whole atlas on the model's detector.
        resample: user's detector -> model's detector (:meth:`DetectorResampling.image`).
    """
    if float(values.min()) <= 0.0:
        return "line-integral"
    candidates = {
        "line-integral": values,
        "transmission": transmission_to_line_integral(values)[0],
    }
    scores = {route: _ncc(resample(image), atlas_drr) for route, image in candidates.items()}
    return max(scores, key=lambda route: scores[route])


def _ncc(first: np.ndarray, second: np.ndarray) -> float:
    """Global normalised cross-correlation of two images of one shape."""
    a, b = first - first.mean(), second - second.mean()
    return float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-12))


def _line_integrals(
    path: Path, read: _Radiograph, intensity: str, air_level: float | None, auto_route: Callable[[np.ndarray], str]
) -> tuple[np.ndarray, dict[str, Any]]:
    """The radiograph as line integrals and the intensity record (DICOM: as the tags said)."""
    if read.dicom is not None:
        return read.values, dict(read.dicom.assumptions)
    route = auto_route(read.values) if intensity == "auto" else intensity
    record: dict[str, Any] = {"intensity": {"requested": intensity, "route": route}}
    if route == "line-integral":
        return read.values, record
    try:
        image, level = transmission_to_line_integral(read.values, air_level)
    except ValueError as error:
        raise InputError(f"{path}: {error} (give --air-level)") from None
    record["intensity"]["air_level"] = {"value": level, "source": "given" if air_level is not None else "estimated"}
    return image, record


def _user_view(
    name: str,
    path: Path,
    read: _Radiograph,
    geometry: dict[str, ProjectionView] | None,
    geometry_path: Path | None,
    isocenter: np.ndarray,
) -> tuple[ProjectionView, str]:
    """The view of the user's detector: the geometry file's when given, else the DICOM tags'."""
    shape = tuple(read.values.shape)
    if geometry is not None:
        view = geometry[name]
        if view.image_shape != shape:
            raise InputError(
                f"{path}: image shape {list(shape)} differs from the geometry's views.{name}.image_shape "
                f"{list(view.image_shape)} ({geometry_path})"
            )
        return view, f"geometry file {geometry_path}"
    if read.dicom is None:
        raise InputError(f"{path}: not a DICOM file, so its geometry must come from --geometry")
    return dicom_view(read.dicom, name, isocenter), "DICOM tags"


def _read_mask(path: Path, read: _Radiograph) -> np.ndarray:
    """A given 2D femur mask, on the radiograph's pixels and in the contract's orientation."""
    mask = read_image(path)
    if mask.shape != read.values.shape:
        raise InputError(
            f"{path}: mask shape {list(mask.shape)} differs from its radiograph's {list(read.values.shape)}"
        )
    flips = () if read.dicom is None else read.dicom.flips
    return np.ascontiguousarray(np.flip(mask, flips) if flips else mask) > 0


def _resolve_side(side: str | None, reads: dict[str, _Radiograph]) -> tuple[str, str]:
    """``(side, where it came from)``: ``--side``, else the DICOM laterality, else right."""
    if side is not None:
        require_choice("--side", side, SIDES)
        return side, "--side"
    tagged = {
        name: SIDE_LETTERS[read.dicom.laterality]
        for name, read in reads.items()
        if read.dicom is not None and read.dicom.laterality in SIDE_LETTERS
    }
    if len(set(tagged.values())) > 1:
        raise InputError(f"laterality: the DICOM files disagree ({tagged}); give --side")
    if tagged:
        return next(iter(tagged.values())), "DICOM laterality"
    return "right", "default"


@dataclass(frozen=True)
class ModelDetector:
    """What the network was trained on: its detector, and the atlas whose DRRs decide ``auto``.

    Attributes:
        shape: ``(rows, cols)`` of the model's detector.
        isocenter_pixel_mm: its pixel size at the isocentre, mm (what any view is resampled to:
            :mod:`biplanar.geometry.detector`).
        atlas_grid: the atlas grid (its centre is the isocentre of tag geometries and of resampling).
        atlas_drr: model-detector view -> ``(rows, cols)`` DRR of the whole atlas.
    """

    shape: tuple[int, int]
    isocenter_pixel_mm: float
    atlas_grid: VolumeGrid
    atlas_drr: Callable[[ProjectionView], np.ndarray]


def _segment_as_learnt(
    segmenter: Callable[[np.ndarray], np.ndarray], image: np.ndarray, reversed_source: bool
) -> np.ndarray:
    """The mask of ``(rows, cols)`` ``image``, segmented with its columns reversed when its view's
    source is on the other side than the network learnt (:mod:`biplanar.geometry.facing`)."""
    if not reversed_source:
        return segmenter(image)
    return np.ascontiguousarray(segmenter(np.ascontiguousarray(image[:, ::-1]))[:, ::-1])


def _prepare_view(
    name: str,
    path: Path,
    read: _Radiograph,
    user_view: ProjectionView,
    geometry_source: str,
    mask_path: Path | None,
    detector: ModelDetector,
    mirror: SagittalMirror | None,
    segmenter: Callable[[np.ndarray], np.ndarray] | None,
    intensity: str,
    air_level: float | None,
) -> ViewInput:
    """Steps 1 and 3-5 of the module doc for one view whose geometry is known."""
    isocenter = detector.atlas_grid.centre_world
    try:
        resampling = DetectorResampling.onto_model(user_view, detector.shape, detector.isocenter_pixel_mm, isocenter)
    except ValueError as error:
        raise InputError(f"{path}: views.{name}: {error}") from None
    identity = resampling.user_shape == resampling.model_shape and np.allclose(
        resampling.model_to_user, np.eye(3), atol=IDENTITY_TOLERANCE_PX
    )
    resample = (lambda image: image) if identity else resampling.image
    model_view = user_view if identity else resampling.view(user_view)

    def auto_route(values: np.ndarray) -> str:
        return choose_intensity_route(values, detector.atlas_drr(model_view), resample)

    user_image, record = _line_integrals(path, read, intensity, air_level, auto_route)
    try:
        check_radiograph(user_image)
    except ValueError as error:
        raise InputError(f"{path}: {error}") from None
    image = resample(user_image)
    similarity = _ncc(image, detector.atlas_drr(model_view))
    if similarity < MIN_ATLAS_NCC:
        raise InputError(
            f"{path}: the radiograph anti-correlates with the atlas's DRR at its view (NCC {similarity:.2f}): "
            "inverted (bone dark)? check --intensity and the Photometric Interpretation"
        )
    record["atlas_ncc"] = similarity
    mask = None if mask_path is None else resample(_read_mask(mask_path, read).astype(np.float32)) > MASK_THRESHOLD
    view = model_view
    if mirror is not None:
        view, image = mirror.view(model_view), mirror.image(image)
        mask = None if mask is None else mirror.image(mask)
    reversed_source = source_reversed(view, isocenter, name)
    if mask is None:
        if segmenter is None:
            raise InputError(f"{path}: no mask given and no segmentation network to make one")
        mask = _segment_as_learnt(segmenter, image, reversed_source)
    flips = () if read.dicom is None else read.dicom.flips
    record.update(
        source_reversed=reversed_source,
        geometry=geometry_source,
        resampled=None
        if identity
        else {"user_shape": list(resampling.user_shape), "user_pixels_per_model_pixel": list(resampling.scale)},
        flips=list(flips),
    )
    return ViewInput(
        name,
        path,
        user_view,
        user_image,
        view,
        image.astype(np.float32),
        np.asarray(mask, dtype=bool),
        None if identity else resampling,
        flips,
        record,
    )


def read_inputs(
    image_paths: dict[str, Path],
    mask_paths: dict[str, Path | None],
    geometry_path: Path | None,
    detector: ModelDetector,
    segmenter: Callable[[np.ndarray], np.ndarray] | None,
    side: str | None = None,
    intensity: str = "auto",
    air_level: float | None = None,
) -> RegistrationInputs:
    """Read and prepare both views (module doc, steps 1-5).

    Args:
        image_paths: ``{"AP": path, "LAT": path}`` radiographs (``.dcm``, ``.npy``, ``.tif``, ``.png``).
        mask_paths: ``{"AP": path or None, "LAT": path or None}``: both or neither.
        geometry_path: ``geometry.json`` with exactly ``AP`` and ``LAT``; ``None``: the DICOM tags.
        detector: the model's detector and atlas.
        segmenter: ``(rows_m, cols_m)`` line integrals -> bool femur mask; needed without masks.
        side: ``"left"``, ``"right"`` or ``None`` (DICOM laterality, else right).
        intensity: ``"auto"``, ``"line-integral"`` or ``"transmission"`` (docs/contract.md section 7).
        air_level: ``I_air`` of transmission images, in the files' values (estimated when ``None``).

    Raises:
        InputError: one line naming the file (or option) and what is wrong.
    """
    require_choice("--intensity", intensity, INTENSITY_ROUTES)
    given = [name for name, path in mask_paths.items() if path is not None]
    if len(given) == 1:
        raise InputError(f"{mask_paths[given[0]]}: a mask for {given[0]} only; give both AP and LAT masks or none")
    isocenter = detector.atlas_grid.centre_world
    geometry = None if geometry_path is None else read_register_views(geometry_path, isocenter)
    reads = {name: _read_radiograph(image_paths[name], intensity, air_level) for name in VIEW_NAMES}
    side, side_source = _resolve_side(side, reads)
    mirror = SagittalMirror.of_grid(detector.atlas_grid) if side == "left" else None
    views = {}
    for name in VIEW_NAMES:
        path, read = image_paths[name], reads[name]
        user_view, geometry_source = _user_view(name, path, read, geometry, geometry_path, isocenter)
        views[name] = _prepare_view(
            name,
            path,
            read,
            user_view,
            geometry_source,
            mask_paths[name],
            detector,
            mirror,
            segmenter,
            intensity,
            air_level,
        )
    return RegistrationInputs(views, side, side_source, mirror, "given" if given else "segmented")


def segment_file(
    image_path: Path,
    detector: ModelDetector,
    segmenter: Callable[[np.ndarray], np.ndarray],
    geometry_path: Path | None = None,
    view_name: str = "AP",
    side: str | None = None,
    intensity: str = "auto",
    air_level: float | None = None,
) -> tuple[np.ndarray, ViewInput]:
    """The femur mask of one radiograph, on its own pixels (``biplanar segment``).

    The radiograph goes the way of ``register``'s (module doc): read as line integrals, onto the
    model's detector, mirrored for a left femur, segmented; the mask is then brought back onto the
    file's pixels and orientation. Its geometry comes from ``geometry_path``'s ``view_name``, else
    the DICOM tags, else (an array of the model detector's shape) the paper's C-arm view of that
    name on the model's detector.

    Returns:
        ``(rows, cols)`` bool mask in the file's pixels, and the prepared view.
    """
    require_choice("--intensity", intensity, INTENSITY_ROUTES)
    isocenter = detector.atlas_grid.centre_world
    read = _read_radiograph(image_path, intensity, air_level)
    side, _ = _resolve_side(side, {view_name: read})
    mirror = SagittalMirror.of_grid(detector.atlas_grid) if side == "left" else None
    if geometry_path is None and read.dicom is None and read.values.shape == detector.shape:
        user_view = biplanar_pair(
            image_shape=detector.shape,
            pixel_spacing_mm=(detector.isocenter_pixel_mm * PAPER_SOURCE_DETECTOR_MM / PAPER_SOURCE_ISOCENTER_MM,) * 2,
            isocenter_mm=isocenter,
        )[view_name]
        source = "the paper's C-arm view on the model's detector (no geometry given)"
    else:
        geometry = None if geometry_path is None else read_register_views(geometry_path, isocenter)
        user_view, source = _user_view(view_name, image_path, read, geometry, geometry_path, isocenter)
    view = _prepare_view(
        view_name, image_path, read, user_view, source, None, detector, mirror, segmenter, intensity, air_level
    )
    return view.mask_in_file_pixels(mirror), view


def read_register_views(geometry_path: Path, default_isocenter_mm: np.ndarray) -> dict[str, ProjectionView]:
    """The AP and LAT views of a geometry file (exactly those two)."""
    views = read_geometry(geometry_path, default_isocenter_mm)
    require_views(views, list(VIEW_NAMES), str(geometry_path))
    extra = sorted(set(views) - set(VIEW_NAMES))
    if extra:
        raise InputError(f"{geometry_path}: views: register takes exactly AP and LAT, got also {', '.join(extra)}")
    return views


def load_model_atlas(atlas_dir: Path | None, network):
    """The atlas to register: the model's own, or ``atlas_dir`` on the same grid (then the network's
    atlas buffers are replaced by it)."""

    atlas = load_atlas(network.config.geometry.grid_preset, atlas_dir)
    grid = network.grid
    if atlas.grid.shape != grid.shape or not np.allclose(atlas.grid.affine, grid.affine, atol=1e-4):
        raise InputError(
            f"{atlas_dir}: atlas grid {atlas.grid.shape} differs from the model's atlas grid "
            f"{grid.shape} (or its affine)"
        )
    if atlas_dir is not None:
        device = network.atlas_mu.device
        network.atlas_mu.copy_(hu_to_mu(torch.from_numpy(atlas.ct_hu).float())[None, None].to(device))
        network.atlas_labels.copy_(torch.from_numpy(atlas.labels > 0).float()[None, None].to(device))
    return atlas


def read_truth(truth_path: Path | None, atlas) -> np.ndarray | None:
    """The true femur ``(I, J, K)`` bool on the atlas grid, or ``None`` without ``truth_path``."""
    if truth_path is None:
        return None
    truth, grid = read_volume(truth_path)
    if grid.shape != atlas.grid.shape or not np.allclose(grid.affine, atlas.grid.affine, atol=1e-4):
        raise InputError(
            f"{truth_path}: grid {grid.shape} differs from the atlas grid {atlas.grid.shape} (or its affine)"
        )
    return np.round(truth) == FEMUR_LABEL
