"""A wrong LAT angle with and without ``register --estimate-pose`` (issue 7's check of Fig. 3, issue 15's
check on radiographs of the whole patient).

For the first ``--cases`` subjects of a ``biplanar simulate`` dataset with orthogonal views (either
scene, ``grid`` or ``body``), the registration is run four times with the model (default: the
bundled one) and the subject's true 2D masks:

- ``true``: the subject's own geometry.json (AP 0, LAT 90 degrees);
- ``true+estimate-pose``: the same, corrected per view first (how far a correct geometry is moved);
- ``wrong``: the LAT view stated at ``90 + --error`` degrees (the radiographs stay those of 90);
- ``wrong+estimate-pose``: the same wrong geometry, corrected per view first.

For each run and view it records how far the correction turned the view (``*_moved_deg``), how far
the view given to the network is from the true one (``*_error_deg``: the angle of the rotation
between their projection matrices' rotations), and the correction's reference (``atlas box`` or
``hip bones``, :func:`biplanar.registration.correct_calibration`). Prints a summary per variant and
writes ``cases.csv`` and ``summary.md`` into ``--out``. ``--reference atlas-box`` corrects every view
against the whole atlas, as ``register`` did before issue 15 (the "before" numbers)::

    python examples/estimate_pose_study.py --data data/lite_heldout --cases 10 --error 5 --out results/pose5
    python examples/estimate_pose_study.py --data data/pose_body --cases 8 --error 5 --out runs/pose_body/study
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy.linalg import rq

from biplanar.evaluation.evaluate import rows_to_csv
from biplanar.geometry.presets import biplanar_pair
from biplanar.geometry.projection import ProjectionView, view_angles_deg
from biplanar.io.atomic import atomic_write_text
from biplanar.io.geometry_file import read_geometry, write_geometry
from biplanar.registration import CORRECTED_GEOMETRY, pipeline, register

VARIANTS = ("true", "true+estimate-pose", "wrong", "wrong+estimate-pose")
ANGLE_COLUMNS = ("AP_moved_deg", "LAT_moved_deg", "AP_error_deg", "LAT_error_deg")


def wrong_geometry(geometry_path: Path, error_deg: float, out_path: Path) -> None:
    """``geometry_path``'s views with the LAT view's LAO/RAO angle off by ``error_deg``."""
    views = read_geometry(geometry_path)
    ap = views["AP"].carm
    stated = biplanar_pair(
        ap_lao_rao_deg=ap.lao_rao_deg,
        lat_lao_rao_deg=views["LAT"].carm.lao_rao_deg + error_deg,
        image_shape=views["AP"].image_shape,
        pixel_spacing_mm=ap.pixel_spacing_mm,
        isocenter_mm=ap.isocenter_mm,
    )
    write_geometry(out_path, stated)


def camera_rotation(view: ProjectionView) -> np.ndarray:
    """``(3, 3)`` rotation ``R`` of the view's ``M = K R`` (``K`` upper triangular, positive diagonal)."""
    intrinsics, rotation = rq(view.matrix[:, :3])
    signs = np.sign(np.diag(intrinsics))
    rotation = signs[:, None] * rotation
    return rotation * np.sign(np.linalg.det(rotation))


def angle_between_deg(first: ProjectionView, second: ProjectionView) -> float:
    """The angle of the rotation between two views' orientations, degrees."""
    relative = camera_rotation(first) @ camera_rotation(second).T
    return float(np.degrees(np.arccos(np.clip((np.trace(relative) - 1.0) / 2.0, -1.0, 1.0))))


def run_case(case: Path, geometry: Path, out: Path, model: Path | None, estimate_pose: bool) -> dict:
    report = register(
        geometry,
        case / "AP.npy",
        case / "LAT.npy",
        out,
        model=model,
        ap_mask=case / "AP_mask.npy",
        lat_mask=case / "LAT_mask.npy",
        truth_labels=case / "labels.nii.gz",
        estimate_pose=estimate_pose,
        progress=False,
    ).report
    corrections = report.get("pose_correction", {}).get("views", {})
    used = read_geometry(out / CORRECTED_GEOMETRY) if estimate_pose else read_geometry(geometry)
    true = read_geometry(case / "geometry.json")
    row = {"dice": report["dice"], "assd_mm": report["assd_mm"]}
    for name in ("AP", "LAT"):
        correction = corrections.get(name, {})
        row[f"{name}_moved_deg"] = correction.get("angle_deg", 0.0)
        row[f"{name}_error_deg"] = angle_between_deg(used[name], true[name])
        row[f"{name}_reference"] = correction.get("reference", "")
        row[f"{name}_found_deg"] = correction.get("found_deg", "")
    row["lat_angle_used_deg"] = view_angles_deg(used["LAT"])[0]
    row["pose_correction_s"] = report["timings_s"].get("pose_correction", 0.0)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--error", type=float, default=5.0, help="LAT angle error, degrees")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--reference",
        choices=("auto", "atlas-box"),
        default="auto",
        help="auto: as register does; atlas-box: every view corrected against the whole atlas (before issue 15)",
    )
    args = parser.parse_args()
    if args.reference == "atlas-box":
        pipeline.ATLAS_BOX_GC = -math.inf  # every radiograph taken for one of the atlas box
    cases = sorted((args.data / "subjects").glob("case_*"))[: args.cases]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases:
        wrong = args.out / f"{case.name}_geometry_lat_{args.error:+g}.json"
        wrong_geometry(case / "geometry.json", args.error, wrong)
        for variant, geometry, estimate in (
            ("true", case / "geometry.json", False),
            ("true+estimate-pose", case / "geometry.json", True),
            ("wrong", wrong, False),
            ("wrong+estimate-pose", wrong, True),
        ):
            result = run_case(case, geometry, args.out / variant / case.name, args.model, estimate)
            rows.append({"case": case.name, "variant": variant, **result})
            print(json.dumps(rows[-1]))
    atomic_write_text(args.out / "cases.csv", rows_to_csv(rows))
    lines = [
        f"LAT angle stated {args.error:+g} deg off, {len(cases)} cases of {args.data}, reference {args.reference}",
        "",
        "mean ± sd over the cases; moved / error: mean (min to max), degrees",
        "",
        "| variant | Dice | ASSD (mm) | AP moved | LAT moved | AP error | LAT error |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for variant in VARIANTS:
        chosen = [row for row in rows if row["variant"] == variant]
        dice = np.array([row["dice"] for row in chosen])
        assd = np.array([row["assd_mm"] for row in chosen])
        spread = [np.array([row[key] for row in chosen]) for key in ANGLE_COLUMNS]
        angles = " | ".join(f"{value.mean():.2f} ({value.min():.2f} to {value.max():.2f})" for value in spread)
        lines.append(
            f"| {variant} | {dice.mean():.4f} ± {dice.std(ddof=1):.4f} | {assd.mean():.3f} ± {assd.std(ddof=1):.3f} "
            f"| {angles} |"
        )
    atomic_write_text(args.out / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
