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
from biplanar.errors import InputError
from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.geometry_file import read_geometry, require_views
from biplanar.io.images import read_image
from biplanar.io.json_files import read_json
from biplanar.io.volumes import read_volume

SPLITS = ("train", "val", "test", "all")  # "all": every subject (a held-out test set)


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
            to resume it), or an incomplete subject folder.
    """

    def __init__(self, root: str | Path, split: str = "train", masked: bool = True) -> None:
        if split not in SPLITS:
            raise InputError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
        self.root, self.masked = Path(root), masked
        self.config = SimulationConfig.from_dict(read_json(self.root / "dataset.json")["config"])
        splits = read_json(self.root / "split.json")
        self.subject_ids: list[str] = sorted(
            [name for names in splits.values() for name in names] if split == "all" else splits[split]
        )
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
