"""Simulated biplanar cases and datasets: a phantom CT, its AP and LAT radiographs and femur masks.

A *case* is one synthetic subject (:class:`biplanar.data.phantom.SubjectSpec`; its femur the
parametric phantom's or drawn from the real-subject shape model, :data:`SHAPES`) seen by two C-arm
views whose isocentre is the volume's centre (the world origin of the grid presets):

- ``orthogonal``: AP at LAO/RAO 0 degrees, LAT at 90 degrees (the paper's set-up);
- ``generalized``: each view's LAO/RAO uniform within +-30 degrees of 0 and of 90, cranio-caudal
  0, drawn from the case seed (:func:`biplanar.geometry.random_generalized_pair`);
- ``mixed``: each case orthogonal or generalized with probability 1/2, drawn from the case seed
  (the bundled model's training set: calibrated pairs anywhere within +-30 degrees).

Radiographs (``(rows, cols)`` float32, dimensionless) project the subject's scene (``scene``):

- ``body`` (the default): the patient around the CT, body outline with skin and air, soft tissue,
  both hemipelves and both femurs, on a grid larger than the CT's that every ray crosses in full;
  the CT and labels are cut from it (:mod:`biplanar.data.scene`), so no box edge shows;
- ``grid``: the CT alone, soft tissue ending at the grid's faces (datasets made before scenes);
- ``femur``: the femur alone, its voxels of the CT in air (what a projector given only a voxelised
  femur renders: no soft tissue, no pelvis; the CT and labels written are the grid's as with
  ``grid``),

in one of the modes:

- ``line_integral``: ``integral of mu ds`` with ``mu = hu_to_mu(HU)`` (``docs/contract.md`` 3);
- ``poisson``: the same with quantum noise at ``photons`` per pixel, log-transformed back;
- ``polychromatic``: a two-material DRR with a ``kvp`` tube and ``aluminium_mm`` filtration;
- ``clinical``: a clinic's processed "for presentation" image (:mod:`biplanar.physics.clinical_appearance`:
  the polychromatic DRR, scatter, noise, detector blur, log, contrast processing, windowing), the
  displayed values 0 to 4095 (bone bright), each case's appearance drawn from its case seed
  (:meth:`ClinicalAppearance.draw`, recorded in ``subject.json``); also written as DICOM
  (``AP.dcm``, ``LAT.dcm``: the stored values under the case's photometric interpretation, Pixel
  Intensity Relationship ``LOG``, and the geometry tags of ``docs/contract.md`` section 7).

``bone_contrast`` above 1 renders each case's radiographs as a renderer that weighs bone more
would: the scene's CT numbers pass through
:func:`~biplanar.physics.attenuation.with_bone_contrast` with a factor uniform in
``[1, bone_contrast]`` drawn from the case seed (recorded in ``subject.json``) before any mode; the
CT written stays the scene's.

``uniform_femur`` renders each case's radiographs as a projector given a voxelised femur mesh of
one density would: the registered femur's voxels take one CT number, uniform in
:data:`UNIFORM_FEMUR_HU_RANGE` per case (recorded in ``subject.json``), in whatever scene; no cortex,
marrow or trabecular texture. The CT written stays the subject's.

Femur masks: the mask rule of :mod:`biplanar.data.masks` (the ray crosses more than
:data:`~biplanar.data.masks.MASK_MIN_PATH_MM` mm of femur), with the radiographs' ``num_samples``.
A masked radiograph is radiograph x mask, as the paper feeds the network.

The detector of preset ``P`` is the one its model sees: ``geometry.image_shape`` and
``geometry.pixel_spacing_mm`` of the config preset of the same name (``load_config(P)``,
``biplanar/resources/configs/P.yaml``). They keep the paper's field of view at every preset:
``paper`` 224 x 160 px at 0.93 mm, ``lite`` 112 x 80 at 1.86 mm, ``tiny`` 56 x 40 at 3.72 mm.

Dataset layout written by :func:`simulate_dataset` (all files written atomically)::

    out_dir/dataset.json        config, n, seed, biplanar version (written first)
    out_dir/split.json          {"train": [ids], "val": [ids], "test": [ids]} (written last)
    out_dir/subjects/<id>/      ct.nii.gz (float32 HU), labels.nii.gz (uint8), AP.npy, LAT.npy,
                                AP_mask.npy, LAT_mask.npy, AP_masked.npy, LAT_masked.npy
                                (float32 (rows, cols)), geometry.json, subject.json;
                                mode clinical also AP.dcm, LAT.dcm (:func:`subject_files`)

Subject ``i`` of dataset seed ``s`` is ``case_<i:05d>`` with case seed :func:`subject_seed`
``(s, i)``. Each subject is written into a temporary sibling folder then renamed, so an
interrupted run leaves only complete subjects; a re-run skips them (resume).
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from biplanar.config import DEFAULT_NUM_SAMPLES, MAX_SUBJECTS, MAX_WORKERS, PRESETS, load_config
from biplanar.data.atlas import FEMUR_LABEL
from biplanar.data.body_shape import AIR_HU
from biplanar.data.femur_ssm import LARGEST_OFF_MODEL_MM, LARGEST_SPREAD, SsmFemurParameters
from biplanar.data.grid_presets import GRID_PRESETS, grid_preset
from biplanar.data.masks import femur_masks
from biplanar.data.phantom import (
    MAX_POSE_ANGLE_DEG,
    MAX_TRANSLATION_MM,
    PoseRange,
    Subject,
    SubjectSpec,
    render_subject,
)
from biplanar.data.scene import Scene, render_scene
from biplanar.data.workers import start_worker
from biplanar.errors import InputError
from biplanar.geometry.presets import (
    VIEW_NAMES,
    biplanar_pair,
    random_generalized_pair,
)
from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.atomic import atomic_folder, remove_partial_folders
from biplanar.io.dicom import write_dicom_view
from biplanar.io.geometry_file import write_geometry
from biplanar.io.images import write_image
from biplanar.io.json_files import read_json, write_json
from biplanar.io.volumes import write_volume
from biplanar.physics.attenuation import with_bone_contrast
from biplanar.physics.clinical_appearance import BITS_STORED, INTENSITY_SIGN, ClinicalAppearance, to_photometric
from biplanar.physics.drr import RadiographSettings, render_ct_radiograph
from biplanar.progress import progress_bar

GEOMETRIES = ("orthogonal", "generalized", "mixed")
# Femur shapes: the parametric phantom, the real-subject shape model, or either with probability 1/2.
SHAPES = ("phantom", "ssm", "mixed")
SIMULATION_MODES = ("line_integral", "poisson", "polychromatic", "clinical")
SCENES = ("body", "grid", "femur")  # what the radiographs project (module doc)
GENERALIZED_MAX_OFFSET_DEG = 30.0
KVP_RANGE = (20.0, 150.0)  # tube voltages SpekPy models, kV
# The widest leg poses simulate accepts, those examples/positioning_envelope.py renders: further,
# the top of the head (about 80 mm above the grid centre before the shift) nears the lite grid's top
# face (96 mm).
LARGEST_POSE_ANGLE_DEG = 20.0
LARGEST_POSE_SHIFT_MM = 12.0
# The paper's split: 235 training, 40 validation, 40 test subjects of 315.
PAPER_SPLIT = {"train": 235, "val": 40, "test": 40}
# Child streams of a case seed (numpy SeedSequence spawn keys), independent of the subject's own.
GEOMETRY_STREAM, NOISE_STREAM, SPLIT_STREAM, SHAPE_STREAM = 1, 2, 3, 4
APPEARANCE_STREAM = 5  # the clinical mode's per-case appearance
BONE_CONTRAST_STREAM = 6  # the per-case bone contrast factor
UNIFORM_FEMUR_STREAM = 7  # the per-case CT number of a uniform femur
# CT numbers a voxelised femur of one density may be given: from trabecular-like to cortical-like.
UNIFORM_FEMUR_HU_RANGE = (300.0, 1500.0)
LARGEST_BONE_CONTRAST = 4.0
SUBJECT_FILES = (
    "ct.nii.gz",
    "labels.nii.gz",
    *(f"{view}{suffix}.npy" for view in VIEW_NAMES for suffix in ("", "_mask", "_masked")),
    "geometry.json",
    "subject.json",
)
CLINICAL_FILES = tuple(f"{view}.dcm" for view in VIEW_NAMES)  # mode clinical writes these too


@functools.cache
def preset_detector(preset: str) -> tuple[tuple[int, int], float]:
    """``(image_shape, pixel_spacing_mm)`` of config preset ``preset``'s detector (``load_config(preset).geometry``)."""
    geometry = load_config(preset).geometry
    rows, cols = geometry.image_shape
    return (rows, cols), geometry.pixel_spacing_mm


@dataclass(frozen=True)
class SimulationConfig:
    """How cases are simulated.

    Attributes:
        preset: grid and detector preset, ``paper``, ``lite`` or ``tiny`` (the detector is the
            config preset's, :func:`preset_detector`).
        geometry: ``orthogonal``, ``generalized`` or ``mixed`` (see the module doc).
        shapes: the femurs, one of :data:`SHAPES` (:func:`case_femur_shape`).
        scene: what the radiographs project, one of :data:`SCENES` (module doc).
        mode: radiograph values, one of :data:`SIMULATION_MODES`.
        photons: incident photons per pixel (``poisson``).
        kvp: tube voltage, kV (``polychromatic``).
        aluminium_mm: tube filtration, mm of aluminium (``polychromatic``).
        num_samples: ProST samples per ray (radiographs and masks).
        pose_angle_deg: largest flexion, abduction and rotation of the leg (:class:`PoseRange`).
        pose_shift_mm: largest translation of the patient along each world axis, mm.
        bone_contrast: largest bone contrast factor of a case's radiographs, in ``[1, 4]`` (module
            doc; 1: this project's ``hu_to_mu`` as it is).
        shape_spread: standard deviation of a shape-model femur's mode weights, in ``(0, 3]``
            (1: the model's population; above 1 more femurs near its edges; still truncated at
            +-3 sd; phantom femurs keep their ranges).
        off_model_mm: move each shape-model femur off the model by this root mean square along its
            normals, mm, in ``[0, 3]`` (0: none; :func:`~biplanar.data.femur_ssm.off_model_vertices`
            with the case seed; phantom femurs are unchanged).
        uniform_femur: render the femur's voxels at one CT number per case (module doc).
    """

    preset: str = "lite"
    geometry: str = "orthogonal"
    shapes: str = "mixed"
    scene: str = "body"
    mode: str = "line_integral"
    photons: float = 1e5
    kvp: float = 80.0
    aluminium_mm: float = 2.5
    num_samples: int = DEFAULT_NUM_SAMPLES
    pose_angle_deg: float = MAX_POSE_ANGLE_DEG
    pose_shift_mm: float = MAX_TRANSLATION_MM
    bone_contrast: float = 1.0
    shape_spread: float = 1.0
    off_model_mm: float = 0.0
    uniform_femur: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (
            ("preset", sorted(set(GRID_PRESETS) & set(PRESETS))),
            ("geometry", GEOMETRIES),
            ("shapes", SHAPES),
            ("scene", SCENES),
            ("mode", SIMULATION_MODES),
        ):
            if getattr(self, name) not in allowed:
                raise InputError(f"{name}: expected one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not (
            self.photons > 0
            and KVP_RANGE[0] <= self.kvp <= KVP_RANGE[1]
            and self.aluminium_mm >= 0
            and self.num_samples >= 1
            and 0 <= self.pose_angle_deg <= LARGEST_POSE_ANGLE_DEG
            and 0 <= self.pose_shift_mm <= LARGEST_POSE_SHIFT_MM
            and 1 <= self.bone_contrast <= LARGEST_BONE_CONTRAST
            and 0 < self.shape_spread <= LARGEST_SPREAD
            and 0 <= self.off_model_mm <= LARGEST_OFF_MODEL_MM
        ):
            raise InputError(
                f"photons > 0, kvp in {KVP_RANGE}, aluminium_mm >= 0, num_samples >= 1, pose_angle_deg "
                f"in [0, {LARGEST_POSE_ANGLE_DEG}], pose_shift_mm in [0, {LARGEST_POSE_SHIFT_MM}], "
                f"bone_contrast in [1, {LARGEST_BONE_CONTRAST}], shape_spread in (0, {LARGEST_SPREAD}] and "
                f"off_model_mm in [0, {LARGEST_OFF_MODEL_MM}] expected, got {self.photons}, {self.kvp}, "
                f"{self.aluminium_mm}, {self.num_samples}, {self.pose_angle_deg}, {self.pose_shift_mm}, "
                f"{self.bone_contrast}, {self.shape_spread}, {self.off_model_mm}"
            )

    @property
    def radiograph(self) -> RadiographSettings:
        """How the radiographs are rendered: ``mode``, ``num_samples``, ``photons``, ``kvp`` and
        ``aluminium_mm`` (water at :data:`~biplanar.physics.attenuation.MU_WATER_PER_MM`)."""
        return RadiographSettings(self.mode, self.num_samples, self.photons, self.kvp, self.aluminium_mm)

    @property
    def pose_range(self) -> PoseRange:
        """How far the subjects' legs are turned and moved (:meth:`Pose.sample`)."""
        return PoseRange(self.pose_angle_deg, self.pose_shift_mm)

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of both detectors: the config preset's ``geometry.image_shape``."""
        return preset_detector(self.preset)[0]

    @property
    def pixel_spacing_mm(self) -> tuple[float, float]:
        """``(row, col)`` detector spacing, mm: the config preset's ``geometry.pixel_spacing_mm``."""
        spacing = preset_detector(self.preset)[1]
        return spacing, spacing

    def to_dict(self) -> dict[str, Any]:
        """Field name -> value (JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SimulationConfig:
        """The inverse of :meth:`to_dict`; ``InputError`` on unknown fields. A config without
        ``shapes`` is from before the shape model: its femurs are phantoms; one without ``scene``
        from before scenes: its radiographs project the grid."""
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"simulation config: unknown field(s) {sorted(unknown)}")
        return cls(**{"shapes": "phantom", "scene": "grid", **values})


DEFAULT_CONFIG = SimulationConfig()


class GriddedVolumes(Protocol):
    """A CT and its femur labels on one grid (a :class:`~biplanar.data.phantom.Subject`, a
    :class:`~biplanar.data.preprocess.PreprocessResult`)."""

    @property
    def ct_hu(self) -> np.ndarray: ...
    @property
    def labels(self) -> np.ndarray: ...
    @property
    def grid(self) -> VolumeGrid: ...


class RenderedCase(ABC):
    """The volumes and radiographs of a case, as :func:`write_case` reads them: the base of
    :class:`SimulatedCase` and of a case made from a real CT (dataclasses holding ``radiographs``
    and ``masks``, view name -> ``(rows, cols)`` float32)."""

    radiographs: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]

    @property
    @abstractmethod
    def volumes(self) -> GriddedVolumes:
        """The CT, its labels and their grid."""

    @property
    def ct_hu(self) -> np.ndarray:
        """``(I, J, K)`` float32 HU on :attr:`grid`."""
        return self.volumes.ct_hu

    @property
    def labels(self) -> np.ndarray:
        """``(I, J, K)`` uint8, 1 = femur."""
        return self.volumes.labels

    @property
    def grid(self) -> VolumeGrid:
        """The volumes' grid (world RAS+ mm)."""
        return self.volumes.grid

    @property
    def masked_radiographs(self) -> dict[str, np.ndarray]:
        """View name -> radiograph x mask, ``(rows, cols)`` float32."""
        return {name: self.radiographs[name] * self.masks[name] for name in self.radiographs}


@dataclass(frozen=True)
class SimulatedCase(RenderedCase):
    """One simulated case.

    Attributes:
        seed: the case seed (the subject's, :meth:`SubjectSpec.sample`).
        subject: CT (HU), labels, grid, parameters, pose and landmarks.
        views: ``AP`` and ``LAT`` views, isocentre at the grid centre.
        radiographs: view name -> ``(rows, cols)`` float32, dimensionless (see ``mode``).
        masks: view name -> ``(rows, cols)`` float32, 1.0 femur, 0.0 elsewhere (the mask rule).
        appearance: the ``clinical`` mode's parameters of this case, else ``None``.
        scene: where the projected scene lies (scene ``body``), else ``None`` (the radiographs
            project the CT on :attr:`grid`).
        bone_contrast: the bone contrast factor the radiographs were rendered with (module doc).
        femur_hu: the one CT number the femur was rendered with (``uniform_femur``), else ``None``.
    """

    seed: int
    subject: Subject
    views: dict[str, ProjectionView]
    radiographs: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    appearance: ClinicalAppearance | None = None
    scene: Scene | None = None
    bone_contrast: float = 1.0
    femur_hu: float | None = None

    @property
    def volumes(self) -> Subject:
        """The subject's CT, labels and grid."""
        return self.subject

    @property
    def side(self) -> str:
        """The hip the radiographs show: a simulated subject's femur is a right one."""
        return "right"

    def record(self) -> dict[str, Any]:
        """The subject's seed, parameters, pose and landmarks, the clinical appearance and the
        scene (JSON-ready)."""
        spec = self.subject.spec
        appearance = {} if self.appearance is None else {"appearance": self.appearance.to_dict()}
        scene = {} if self.scene is None else {"scene": self.scene.to_dict()}
        body = {} if self.scene is None else {"body": spec.body.to_dict()}
        bone = {} if self.bone_contrast == 1.0 else {"bone_contrast": self.bone_contrast}
        uniform = {} if self.femur_hu is None else {"uniform_femur_hu": self.femur_hu}
        return {
            "seed": self.seed,
            "parameters": {
                "femur": spec.femur.to_dict(),
                "pelvis": spec.pelvis.to_dict(),
                "tissue": spec.tissue.to_dict(),
                **body,
            },
            "pose": spec.pose.to_dict(),
            "detail_seed": spec.detail_seed,
            "landmarks": self.subject.landmarks.to_dict(),
            **appearance,
            **scene,
            **bone,
            **uniform,
        }


def _child_seed(seed: int, key: int) -> np.random.SeedSequence:
    """The independent child stream ``key`` of ``seed``."""
    return np.random.SeedSequence(seed, spawn_key=(key,))


def _as_int(sequence: np.random.SeedSequence) -> int:
    """63 bits of a seed sequence's state: a seed for numpy and for ``torch.manual_seed``."""
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))


def subject_seed(dataset_seed: int, index: int) -> int:
    """Case seed of subject ``index`` of dataset ``dataset_seed`` (both ``>= 0``), from
    ``SeedSequence([dataset_seed, index])``: distinct datasets never share subjects in practice."""
    return _as_int(np.random.SeedSequence([dataset_seed, index]))


def subject_id(index: int) -> str:
    """Folder name of subject ``index``: ``case_00007``."""
    return f"case_{index:05d}"


def case_views(seed: int, config: SimulationConfig, grid: VolumeGrid) -> dict[str, ProjectionView]:
    """The ``AP`` and ``LAT`` views of case ``seed``, isocentre at the centre of ``grid``."""
    image_shape, pixel_spacing_mm, isocenter_mm = config.image_shape, config.pixel_spacing_mm, grid.centre_world
    rng = np.random.default_rng(_child_seed(seed, GEOMETRY_STREAM))
    orthogonal = config.geometry == "orthogonal" or (config.geometry == "mixed" and rng.random() < 0.5)
    if orthogonal:
        return biplanar_pair(image_shape=image_shape, pixel_spacing_mm=pixel_spacing_mm, isocenter_mm=isocenter_mm)
    return random_generalized_pair(
        rng,
        GENERALIZED_MAX_OFFSET_DEG,
        image_shape=image_shape,
        pixel_spacing_mm=pixel_spacing_mm,
        isocenter_mm=isocenter_mm,
    )


def case_femur_shape(seed: int, shapes: str) -> str:
    """The femur shape of case ``seed`` (``phantom`` or ``ssm``) under ``shapes``: ``mixed`` draws
    either with probability 1/2 from the case seed's own stream."""
    if shapes != "mixed":
        return shapes
    rng = np.random.default_rng(_child_seed(seed, SHAPE_STREAM))
    return "ssm" if rng.random() < 0.5 else "phantom"


def render_radiographs(
    ct_hu: np.ndarray,
    grid: VolumeGrid,
    views: dict[str, ProjectionView],
    config: SimulationConfig,
    noise_seed: int = 0,
    appearance: ClinicalAppearance | None = None,
    bone_contrast: float = 1.0,
) -> dict[str, np.ndarray]:
    """Radiographs of a whole CT in ``config.mode``.

    Args:
        ct_hu: ``(I, J, K)`` Hounsfield units on ``grid``.
        grid: the CT's grid (world RAS+ mm).
        views: name -> view.
        config: mode, photons, spectrum and samples per ray.
        noise_seed: seed of the ``poisson`` and ``clinical`` noise (views drawn in order from one generator).
        appearance: the ``clinical`` mode's parameters (default: :class:`ClinicalAppearance`'s defaults).
        bone_contrast: the factor of :func:`~biplanar.physics.attenuation.with_bone_contrast`
            applied to ``ct_hu`` first (1: none).

    Returns:
        view name -> ``(rows, cols)`` float32, dimensionless.
    """
    hu = torch.from_numpy(np.asarray(ct_hu, dtype=np.float32))[None, None]  # (1, 1, I, J, K)
    if bone_contrast != 1.0:
        hu = with_bone_contrast(hu, bone_contrast)
    grid.check_volume(hu, "ct_hu")
    generator = torch.Generator().manual_seed(noise_seed)
    with torch.no_grad():
        images = {
            name: render_ct_radiograph(hu, view, grid, config.radiograph, generator, appearance)
            for name, view in views.items()
        }
    return {name: image[0, 0].numpy() for name, image in images.items()}


def case_appearance(seed: int, config: SimulationConfig) -> ClinicalAppearance | None:
    """The ``clinical`` mode's appearance of case ``seed`` (its own stream), else ``None``."""
    if config.mode != "clinical":
        return None
    return ClinicalAppearance.draw(np.random.default_rng(_child_seed(seed, APPEARANCE_STREAM)))


def case_bone_contrast(seed: int, config: SimulationConfig) -> float:
    """Case ``seed``'s bone contrast factor, uniform in ``[1, config.bone_contrast]`` from its own
    stream (exactly 1 when ``config.bone_contrast`` is 1)."""
    if config.bone_contrast == 1.0:
        return 1.0
    return float(np.random.default_rng(_child_seed(seed, BONE_CONTRAST_STREAM)).uniform(1.0, config.bone_contrast))


def case_femur_hu(seed: int, config: SimulationConfig) -> float | None:
    """Case ``seed``'s uniform femur CT number (``config.uniform_femur``), from its own stream, else ``None``."""
    if not config.uniform_femur:
        return None
    return float(np.random.default_rng(_child_seed(seed, UNIFORM_FEMUR_STREAM)).uniform(*UNIFORM_FEMUR_HU_RANGE))


def with_uniform_femur(
    projected: np.ndarray, labels: np.ndarray, block: tuple[slice, ...] | None, femur_hu: float
) -> np.ndarray:
    """A copy of ``projected`` (HU) with the registered femur's voxels at ``femur_hu``.

    Args:
        projected: ``(I', J', K')`` HU of what the radiographs project (the scene or the grid).
        labels: ``(I, J, K)`` the registration grid's labels.
        block: the registration grid's voxels in ``projected`` (``Scene.block``); ``None``: the same grid.
        femur_hu: the femur's CT number.
    """
    uniform = np.array(projected, dtype=np.float32, copy=True)
    grid_part = uniform if block is None else uniform[block]  # a view: writing it writes ``uniform``
    grid_part[labels == FEMUR_LABEL] = femur_hu
    return uniform


def case_noise_seed(seed: int) -> int:
    """The seed of case ``seed``'s quantum noise (:func:`render_radiographs`' ``noise_seed``)."""
    return _as_int(_child_seed(seed, NOISE_STREAM))


def case_subject(seed: int, config: SimulationConfig = DEFAULT_CONFIG) -> SubjectSpec:
    """The subject case ``seed`` draws under ``config`` (its femur shape, shape spread and pose range;
    a shape-model femur moved ``config.off_model_mm`` off the model by the case seed's field)."""
    spec = SubjectSpec.sample(seed, case_femur_shape(seed, config.shapes), config.pose_range, config.shape_spread)
    if config.off_model_mm == 0 or not isinstance(spec.femur, SsmFemurParameters):
        return spec
    femur = dataclasses.replace(spec.femur, off_model_rms_mm=config.off_model_mm, off_model_seed=seed)
    return dataclasses.replace(spec, femur=femur)


def femur_alone_hu(ct_hu: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The ``femur`` scene's CT: ``(I, J, K)`` float32 HU, the femur's voxels of ``ct_hu`` and air
    elsewhere (``labels``: ``(I, J, K)``, :data:`~biplanar.data.atlas.FEMUR_LABEL` = femur)."""
    return np.where(labels == FEMUR_LABEL, ct_hu, AIR_HU).astype(np.float32)


def simulate_case(
    seed: int, config: SimulationConfig = DEFAULT_CONFIG, spec: SubjectSpec | None = None
) -> SimulatedCase:
    """Simulate case ``seed``: subject, views, radiographs and masks (deterministic in ``seed``).

    ``spec``: the subject to render in place of :func:`case_subject`'s (views, appearance and noise
    still come from ``seed``), e.g. a drawn subject with one of its femur's parameters changed.
    """
    grid = grid_preset(config.preset)
    if spec is None:
        spec = case_subject(seed, config)
    views = case_views(seed, config, grid)
    appearance = case_appearance(seed, config)
    bone_contrast = case_bone_contrast(seed, config)
    femur_hu = case_femur_hu(seed, config)
    scene: Scene | None = None
    if config.scene == "body":
        rendered = render_scene(spec, grid, views)
        subject, scene = rendered.subject, rendered.scene
        projected, projected_grid = rendered.ct_hu, scene.grid
    else:
        subject = render_subject(spec, grid)
        projected, projected_grid = subject.ct_hu, grid
        if config.scene == "femur":
            projected = femur_alone_hu(subject.ct_hu, subject.labels)
    if femur_hu is not None:
        projected = with_uniform_femur(projected, subject.labels, None if scene is None else scene.block, femur_hu)
    radiographs = render_radiographs(
        projected, projected_grid, views, config, case_noise_seed(seed), appearance, bone_contrast
    )
    masks = femur_masks(subject.labels, subject.grid, views, config.num_samples)
    return SimulatedCase(seed, subject, views, radiographs, masks, appearance, scene, bone_contrast, femur_hu)


def split_sizes(n: int) -> dict[str, int]:
    """Train / val / test sizes in the paper's 235 / 40 / 40 proportions.

    ``val`` and ``test`` get ``round(n * 40 / 315)`` each, at least 1 when ``n >= 3``; ``train``
    the rest.
    """
    total = sum(PAPER_SPLIT.values())
    held_out = round(n * PAPER_SPLIT["val"] / total)
    held_out = max(held_out, 1) if n >= 3 else held_out
    return {"train": n - 2 * held_out, "val": held_out, "test": held_out}


def make_split(n: int, seed: int) -> dict[str, list[str]]:
    """Disjoint train / val / test subject ids covering ``0..n-1``, a permutation from ``seed``."""
    return split_names([subject_id(i) for i in range(n)], seed)


def split_names(names: list[str], seed: int) -> dict[str, list[str]]:
    """Disjoint train / val / test parts of ``names`` (:func:`split_sizes`), each sorted: a
    permutation of ``names`` (in the given order) from ``seed``."""
    order = np.random.default_rng(_child_seed(seed, SPLIT_STREAM)).permutation(len(names))
    split, start = {}, 0
    for part, size in split_sizes(len(names)).items():
        split[part] = sorted(names[int(i)] for i in order[start : start + size])
        start += size
    return split


class CaseToWrite(GriddedVolumes, Protocol):
    """What :func:`write_case` writes: a :class:`SimulatedCase`, or a case made from a real CT
    (:mod:`biplanar.data.from_ct`). Attributes as :class:`SimulatedCase`'s; ``side`` is the hip the
    radiographs show (the DICOMs' laterality)."""

    @property
    def views(self) -> dict[str, ProjectionView]: ...
    @property
    def radiographs(self) -> dict[str, np.ndarray]: ...
    @property
    def masks(self) -> dict[str, np.ndarray]: ...
    @property
    def masked_radiographs(self) -> dict[str, np.ndarray]: ...
    @property
    def appearance(self) -> ClinicalAppearance | None: ...
    @property
    def side(self) -> str: ...
    def record(self) -> dict[str, Any]: ...


def write_case(folder: Path, case: CaseToWrite, extra: dict[str, Any] | None = None) -> None:
    """Write a case's files (:func:`subject_files`) into ``folder``, all or nothing.

    The files go into a temporary sibling folder that is renamed to ``folder`` once complete;
    an existing ``folder`` is replaced. ``extra`` entries are added to ``subject.json``.
    """
    with atomic_folder(Path(folder)) as partial:
        write_volume(partial / "ct.nii.gz", case.ct_hu, case.grid)
        write_volume(partial / "labels.nii.gz", case.labels, case.grid)
        for name in VIEW_NAMES:
            write_image(partial / f"{name}.npy", case.radiographs[name])
            write_image(partial / f"{name}_mask.npy", case.masks[name])
            write_image(partial / f"{name}_masked.npy", case.masked_radiographs[name])
        write_geometry(partial / "geometry.json", case.views)
        write_json(partial / "subject.json", {**(extra or {}), **case.record()})
        if case.appearance is not None:
            _write_clinical_dicoms(partial, case, case.appearance)


def _write_clinical_dicoms(folder: Path, case: CaseToWrite, appearance: ClinicalAppearance) -> None:
    """``AP.dcm`` and ``LAT.dcm`` of a clinical-mode case (module doc), of the case's side."""
    for name in VIEW_NAMES:
        write_dicom_view(
            folder / f"{name}.dcm",
            to_photometric(case.radiographs[name], appearance.photometric),
            case.views[name],
            side=case.side,
            photometric=appearance.photometric,
            intensity_relationship="LOG",
            intensity_sign=INTENSITY_SIGN[appearance.photometric],
            bits_stored=BITS_STORED,
        )


def subject_files(mode: str) -> tuple[str, ...]:
    """The files of a subject folder in ``mode``: :data:`SUBJECT_FILES`, plus :data:`CLINICAL_FILES`
    in mode ``clinical``."""
    return SUBJECT_FILES + CLINICAL_FILES if mode == "clinical" else SUBJECT_FILES


def is_complete(folder: Path, files: tuple[str, ...] = SUBJECT_FILES) -> bool:
    """Whether ``folder`` holds every one of ``files`` (default: those every mode writes)."""
    return all((Path(folder) / name).is_file() for name in files)


@dataclass(frozen=True)
class WrittenSubjects:
    """A dataset folder and the subjects a run made in it (the base of the runs' summaries).

    Attributes:
        out_dir: the dataset folder.
        written: ids made by this run.
    """

    out_dir: Path
    written: tuple[str, ...]


@dataclass(frozen=True)
class DatasetSummary(WrittenSubjects):
    """What :func:`simulate_dataset` did.

    Attributes:
        out_dir, written: the dataset folder and the ids simulated by this run (:class:`WrittenSubjects`).
        skipped: ids already complete (resume).
    """

    skipped: tuple[str, ...]


def simulate_dataset(
    out_dir: str | Path,
    n: int,
    seed: int,
    config: SimulationConfig = DEFAULT_CONFIG,
    workers: int = 1,
    progress: bool = True,
) -> DatasetSummary:
    """Simulate ``n`` cases into ``out_dir`` (layout: module doc), resuming a previous run.

    Args:
        out_dir: dataset folder, created if missing.
        n: number of subjects (``>= 1``).
        seed: dataset seed, ``>= 0``; subject ``i`` has case seed ``subject_seed(seed, i)``.
        config: how cases are simulated.
        workers: processes simulating subjects in parallel (each torch single-threaded);
            1 runs in this process.
        progress: show a progress bar on stderr.

    Raises:
        InputError: ``n`` not in 1..:data:`~biplanar.config.MAX_SUBJECTS`, ``workers`` not in
            1..:data:`~biplanar.config.MAX_WORKERS`, a negative ``seed``, or ``out_dir`` holds a dataset
            made with another seed or config.
    """
    if not 1 <= n <= MAX_SUBJECTS:
        raise InputError(f"n: expected a number of subjects in 1..{MAX_SUBJECTS}, got {n}")
    if not 1 <= workers <= MAX_WORKERS:
        raise InputError(f"workers: expected a number of processes in 1..{MAX_WORKERS}, got {workers}")
    if seed < 0:
        raise InputError(f"seed: expected >= 0, got {seed}")
    out_dir = Path(out_dir)
    write_dataset_manifest(out_dir, n, seed, config)
    subjects_dir = out_dir / "subjects"
    subjects_dir.mkdir(parents=True, exist_ok=True)
    remove_partial_folders(subjects_dir)
    pending = [i for i in range(n) if not is_complete(subjects_dir / subject_id(i), subject_files(config.mode))]
    skipped = tuple(sorted(set(map(subject_id, range(n))) - set(map(subject_id, pending))))
    written = []
    with progress_bar(progress, elapsed=True) as bar:
        task = bar.add_task("simulating subjects", total=n, completed=n - len(pending))
        simulate_one = functools.partial(_simulate_subject, subjects_dir, seed, config)
        for name in in_workers(simulate_one, pending, workers):
            written.append(name)
            bar.advance(task)
    write_json(out_dir / "split.json", make_split(n, seed))
    return DatasetSummary(out_dir, tuple(sorted(written)), skipped)


def write_dataset_manifest(
    out_dir: Path, n: int, seed: int, config: SimulationConfig, source: dict[str, Any] | None = None
) -> None:
    """Write ``dataset.json``; ``InputError`` if it exists with another seed, config or ``source``
    (extra entries naming where the subjects come from, e.g. ``from_ct``)."""
    path = out_dir / "dataset.json"
    source = source or {}
    if path.is_file():
        previous = read_json(path)
        same_source = all(previous.get(key) == value for key, value in source.items())
        recorded = SimulationConfig.from_dict(previous.get("config", {})).to_dict()
        changed = {key: value for key, value in config.to_dict().items() if recorded[key] != value}
        if previous.get("seed") != seed or changed or not same_source:
            was = {key: recorded[key] for key in changed}
            raise InputError(
                f"{path}: the dataset there was made with seed {previous.get('seed')} {was or ''}, "
                f"not seed {seed} {changed or ''} {source or ''}; choose another output folder"
            )
    write_json(
        path,
        {
            "n": n,
            "seed": seed,
            "config": config.to_dict(),
            **source,
            "biplanar_version": version("biplanar"),
            "subject_files": list(subject_files(config.mode)),
        },
    )


def _simulate_subject(subjects_dir: Path, dataset_seed: int, config: SimulationConfig, index: int) -> str:
    """Simulate and write subject ``index``; returns its id."""
    name = subject_id(index)
    case = simulate_case(subject_seed(dataset_seed, index), config)
    write_case(subjects_dir / name, case, {"subject_id": name, "index": index, "dataset_seed": dataset_seed})
    return name


def _single_threaded_worker() -> None:
    """Worker initialiser: one torch thread per process (the processes share the cores)."""
    torch.set_num_threads(1)


Item = TypeVar("Item")
Result = TypeVar("Result")


def in_workers(
    function: Callable[[Item], Result], items: Iterable[Item], workers: int, preload: str = __name__
) -> Iterator[Result]:
    """``function`` of each item, in ``workers`` processes (in this one for 1 worker or 1 item),
    yielded in completion order.

    Args:
        function: a module-level function (it is pickled to the workers).
        items: its arguments (picklable).
        workers: processes, each torch single-threaded; they die with this one (even killed:
            :func:`~biplanar.data.workers.start_worker`) and quietly on Ctrl-C.
        preload: the module the fork server imports before forking the workers (``function``'s).
    """
    items = list(items)
    if workers == 1 or len(items) <= 1:
        yield from map(function, items)
        return
    # Not fork: forking a process whose torch has run its OpenMP thread pool can deadlock. A fork
    # server only imports the module, then forks each worker from it in milliseconds (spawn
    # would import torch again in every worker, seconds each).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([preload])
    with ProcessPoolExecutor(
        min(workers, len(items)), mp_context=context, initializer=start_worker, initargs=(_single_threaded_worker,)
    ) as pool:
        futures = [pool.submit(function, item) for item in items]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
