"""Write a stand-in ``spekpy`` package that replays, from a table, the tube spectra the real
SpekPy computes here, for a lent GPU machine that cannot hold SpekPy (its wheel is 164 MB, over
the 64 MiB that travels there, and that machine has no package index).

Usage::

    python benchmarks/device/make_spekpy_replay.py --out .whl/replay

The table holds :func:`biplanar.physics.polychromatic.tube_spectrum` for every tube setting the
``clinical`` mode draws (:data:`~biplanar.physics.clinical_appearance.APPEARANCE_RANGES`: kVp in
1 kV steps, aluminium in 0.1 mm steps; the 12 degree anode), so that data simulated there are
those simulated here. Any other setting raises, rather than guess. Put ``--out`` on
``PYTHONPATH`` there (``benchmarks/device/gpu_session.sh``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import spekpy

from biplanar.physics.clinical_appearance import APPEARANCE_RANGES

ANODE_ANGLE_DEG = 12.0  # tube_spectrum's default, the one the clinical mode uses

REPLAY_MODULE = '''"""Stand-in for SpekPy on a machine without it: replays spectra SpekPy {version} computed
(benchmarks/device/make_spekpy_replay.py). Only what biplanar calls: Spek(kvp, th, dk),
filter("Al", mm), get_spectrum()."""

from pathlib import Path

import numpy as np

__version__ = "{version}+replay"
_TABLE = np.load(Path(__file__).with_name("spectra.npz"))


class Spek:
    def __init__(self, kvp, th, dk=1.0):
        self.kvp, self.th, self.dk, self.aluminium_mm = float(kvp), float(th), float(dk), 0.0

    def filter(self, material, thickness_mm):
        if material != "Al":
            raise ValueError(f"replayed spectra know only Al filtration, got {{material!r}}")
        self.aluminium_mm += float(thickness_mm)
        return self

    def get_spectrum(self):
        key = f"kvp{{self.kvp:g}}_al{{round(self.aluminium_mm, 1):g}}_th{{self.th:g}}_dk{{self.dk:g}}"
        if key + "_energies" not in _TABLE:
            raise KeyError(f"no replayed spectrum for {{key}}")
        return _TABLE[key + "_energies"], _TABLE[key + "_fluence"]
'''


def settings() -> list[tuple[float, float]]:
    """Every (kVp, aluminium mm) the clinical mode can draw."""
    kvp_low, kvp_high = APPEARANCE_RANGES["kvp"]
    al_low, al_high = APPEARANCE_RANGES["aluminium_mm"]
    kvps = np.arange(round(kvp_low), round(kvp_high) + 1)
    aluminium = np.round(np.arange(round(al_low * 10), round(al_high * 10) + 1) / 10.0, 1)
    return [(float(kvp), float(al)) for kvp in kvps for al in aluminium]


def spectrum_table() -> dict[str, np.ndarray]:
    """Key ``kvp<kV>_al<mm>_th<deg>_dk1_(energies|fluence)`` -> SpekPy's 1 keV spectrum."""
    table: dict[str, np.ndarray] = {}
    for kvp, aluminium_mm in settings():
        spek = spekpy.Spek(kvp=kvp, th=ANODE_ANGLE_DEG, dk=1.0)
        spek.filter("Al", aluminium_mm)
        energies, fluence = spek.get_spectrum()
        key = f"kvp{kvp:g}_al{aluminium_mm:g}_th{ANODE_ANGLE_DEG:g}_dk1"
        table[f"{key}_energies"], table[f"{key}_fluence"] = np.asarray(energies), np.asarray(fluence)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to put on PYTHONPATH")
    args = parser.parse_args()
    package = args.out / "spekpy"
    package.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(package / "spectra.npz", **spectrum_table())
    (package / "__init__.py").write_text(REPLAY_MODULE.format(version=spekpy.__version__))
    print(f"wrote {len(settings())} spectra to {package}")


if __name__ == "__main__":
    main()
