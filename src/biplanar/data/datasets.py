"""Torch datasets of simulated biplanar cases: from a :func:`simulate_dataset` folder, or on the
fly.

Both return the same sample, a dict:

- ``subject_id``: ``str``, e.g. ``"case_00007"``;
- ``ct``: ``(1, I, J, K)`` float32, Hounsfield units, NIfTI array order on the preset's grid
  (world RAS+ mm, see :mod:`biplanar.geometry.volume_grid`);
- ``labels``: ``(1, I, J, K)`` uint8, 1 = femur;
- ``radiographs``: ``(2, rows, cols)`` float32, AP then LAT, masked (radiograph x mask, the
  default, as the paper feeds the network) or not;
- ``masks``: ``(2, rows, cols)`` float32, 1.0 femur, AP then LAT;
- ``projection_matrices``: ``(2, 3, 4)`` float64, AP then LAT, world mm -> pixels
  (``docs/contract.md`` section 2).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from biplanar.data.grid_presets import grid_preset
from biplanar.data.simulate import (
    DEFAULT_CONFIG,
    VIEW_NAMES,
    SimulationConfig,
    is_complete,
    simulate_case,
    subject_id,
    subject_seed,
)
from biplanar.errors import InputError, shown
from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.geometry_file import read_geometry, require_views
from biplanar.io.images import read_image
from biplanar.io.json_files import read_json
from biplanar.io.volumes import read_volume

SPLITS = ("train", "val", "test", "all")  # "all": every subject (a held-out test set)
SPLIT_FILE = "split.json"
# A subject id is a folder name under subjects/: a plain name, never a path (no separator, no "..").
SUBJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def read_split(root: str | Path) -> dict[str, list[str]]:
    """The subject ids of each split of a dataset folder's ``split.json`` (``{"train": [ids], ...}``).

    Every id is checked to be a plain name (:data:`SUBJECT_ID`), so that joining it to
    ``root / "subjects"`` stays inside the dataset.

    Raises:
        InputError: a missing or invalid file, not an object of lists, or an id that is not a plain
            name (``<root>/split.json: train: subject id '../x' is not a plain name ...``).
    """
    path = Path(root) / SPLIT_FILE
    document = read_json(path)
    if not isinstance(document, dict) or not all(isinstance(ids, list) for ids in document.values()):
        raise InputError(f"{path}: expected an object of split name -> list of subject ids")
    for split, ids in document.items():
        for name in ids:
            if not isinstance(name, str) or not SUBJECT_ID.fullmatch(name) or ".." in name:
                raise InputError(
                    f"{path}: {split}: subject id {shown(name)} is not a plain name "
                    "(letters, digits, '_', '.', '-'; no '..')"
                )
    return document


def split_subject_ids(root: str | Path, split: str) -> list[str]:
    """The sorted subject ids of ``split`` of a dataset folder (``all``: every split; a split the
    file lacks: none), read by :func:`read_split`.

    Raises:
        InputError: an unknown ``split``, or a bad ``split.json`` (:func:`read_split`).
    """
    if split not in SPLITS:
        raise InputError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    splits = read_split(root)
    chosen = list(splits.values()) if split == "all" else [splits.get(split, [])]
    return sorted(name for names in chosen for name in names)


def make_sample(
    subject: str,
    ct_hu: np.ndarray,
    labels: np.ndarray,
    radiographs: list[np.ndarray],
    masks: list[np.ndarray],
    views: list[ProjectionView],
) -> dict[str, Any]:
    """A dataset sample (keys, shapes and dtypes: module doc).

    Args:
        subject: the subject id.
        ct_hu: ``(I, J, K)`` HU.
        labels: ``(I, J, K)`` femur labels.
        radiographs, masks: ``(rows, cols)`` each, AP then LAT.
        views: AP then LAT.
    """
    return {
        "subject_id": subject,
        "ct": torch.from_numpy(np.asarray(ct_hu, dtype=np.float32))[None],
        "labels": torch.from_numpy(np.asarray(labels, dtype=np.uint8))[None],
        "radiographs": torch.from_numpy(np.stack(radiographs).astype(np.float32)),
        "masks": torch.from_numpy(np.stack(masks).astype(np.float32)),
        "projection_matrices": torch.from_numpy(np.stack([view.matrix for view in views])),
    }


class _CaseDataset(Dataset):
    """Shared by both datasets: ``config`` (a :class:`SimulationConfig`) fixes the grid."""

    config: SimulationConfig

    @property
    def grid(self) -> VolumeGrid:
        """The volumes' grid (the config's preset; world RAS+ mm)."""
        return grid_preset(self.config.preset)


class SimulatedDataset(_CaseDataset):
    """The subjects of one split of a dataset folder written by :func:`simulate_dataset`.

    Args:
        root: the dataset folder (``dataset.json``, ``split.json``, ``subjects/``).
        split: ``train``, ``val``, ``test`` or ``all`` (every subject: a dataset made only for testing).
        masked: return masked radiographs (``<view>_masked.npy``) rather than the full ones.

    Attributes:
        config: the :class:`SimulationConfig` the dataset was made with.
        subject_ids: the split's ids, sorted.

    Raises:
        InputError: unknown split, no ``split.json`` (an unfinished run: run ``simulate`` again
            to resume it), a subject id that is not a plain name, or an incomplete subject folder.
    """

    def __init__(self, root: str | Path, split: str = "train", masked: bool = True) -> None:
        if split not in SPLITS:
            raise InputError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
        self.root, self.masked = Path(root), masked
        document = read_json(self.root / "dataset.json")
        if not isinstance(document, dict) or not isinstance(document.get("config"), dict):
            raise InputError(f"{self.root / 'dataset.json'}: expected an object with a 'config' object")
        self.config = SimulationConfig.from_dict(document["config"])
        self.subject_ids: list[str] = split_subject_ids(self.root, split)
        incomplete = [name for name in self.subject_ids if not is_complete(self._folder(name))]
        if incomplete:
            raise InputError(
                f"{self.root / 'subjects'}: incomplete subject(s) {incomplete[:5]}; run simulate again to finish them"
            )

    def _folder(self, name: str) -> Path:
        return self.root / "subjects" / name

    def __len__(self) -> int:
        return len(self.subject_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.subject_ids[index]
        folder = self._folder(name)
        ct_hu, _ = read_volume(folder / "ct.nii.gz")
        labels, _ = read_volume(folder / "labels.nii.gz")
        views = read_geometry(folder / "geometry.json")
        require_views(views, list(VIEW_NAMES), str(folder / "geometry.json"))
        suffix = "_masked" if self.masked else ""
        return make_sample(
            name,
            ct_hu,
            labels,
            [read_image(folder / f"{view}{suffix}.npy") for view in VIEW_NAMES],
            [read_image(folder / f"{view}_mask.npy") for view in VIEW_NAMES],
            [views[view] for view in VIEW_NAMES],
        )


class OnTheFlyDataset(_CaseDataset):
    """Simulated cases generated in ``__getitem__``, no disk cache: unlimited fresh subjects.

    Item ``i`` is the case of seed ``subject_seed(base_seed, i)``, i.e. subject ``i`` of a
    :func:`simulate_dataset` run with seed ``base_seed`` and the same config; deterministic per
    index.

    Args:
        base_seed: the dataset seed, ``>= 0``.
        length: the number of items (an epoch); any length works, each index is a new subject.
        config: how cases are simulated.
        masked: return masked radiographs rather than the full ones.
    """

    def __init__(
        self, base_seed: int, length: int, config: SimulationConfig = DEFAULT_CONFIG, masked: bool = True
    ) -> None:
        if base_seed < 0 or length < 1:
            raise InputError(f"base_seed >= 0 and length >= 1 expected, got {base_seed}, {length}")
        self.base_seed, self.length, self.config, self.masked = base_seed, length, config, masked

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"index: expected 0 <= index < {self.length}, got {index}")
        case = simulate_case(subject_seed(self.base_seed, index), self.config)
        radiographs = case.masked_radiographs if self.masked else case.radiographs
        return make_sample(
            subject_id(index),
            case.ct_hu,
            case.labels,
            [radiographs[view] for view in VIEW_NAMES],
            [case.masks[view] for view in VIEW_NAMES],
            [case.views[view] for view in VIEW_NAMES],
        )


class SimulatedDatasets(_CaseDataset):
    """One split of several :func:`simulate_dataset` folders as one dataset, in the order given:
    e.g. a line-integral and a ``clinical``-mode population trained together.

    Args:
        roots: the dataset folders; they must share the grid preset and the image shape (their
            mode, shapes, scene and geometry may differ).
        split, masked: as :class:`SimulatedDataset`.

    Attributes:
        config: the first folder's :class:`SimulationConfig` (its grid and image shape are all of theirs).
        parts: one :class:`SimulatedDataset` per folder.

    Raises:
        InputError: no folder, or a folder whose grid preset or image shape differs from the first's
            (naming it), and whatever :class:`SimulatedDataset` raises.
    """

    def __init__(self, roots: Sequence[str | Path], split: str = "train", masked: bool = True) -> None:
        if not roots:
            raise InputError("data: expected at least one dataset folder")
        self.parts = [SimulatedDataset(root, split, masked) for root in roots]
        self.config = self.parts[0].config
        for root, part in zip(roots, self.parts, strict=True):
            shared = (part.config.preset, tuple(part.config.image_shape))
            if shared != (self.config.preset, tuple(self.config.image_shape)):
                raise InputError(
                    f"{Path(root) / 'dataset.json'}: grid preset and image shape {shared} differ from "
                    f"{Path(roots[0]) / 'dataset.json'}'s {(self.config.preset, tuple(self.config.image_shape))}"
                )
        self._concatenated: ConcatDataset[dict[str, Any]] = ConcatDataset(self.parts)

    def __len__(self) -> int:
        return len(self._concatenated)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._concatenated[index]


CaseDataset = SimulatedDataset | SimulatedDatasets | OnTheFlyDataset  # a source of training cases (``open_datasets``)
