"""Self-intersections of a triangle mesh (:mod:`biplanar.evaluation.self_intersection`): crossing and
touching triangles, a closed sphere and the same sphere folded through itself, the shipped atlas mesh."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from biplanar.data.atlas import atlas_surface, load_atlas
from biplanar.evaluation.self_intersection import self_intersections

FIRST = [[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]  # a right triangle in the plane z = 0


@pytest.mark.parametrize(
    "second, expected",
    [
        ([[0.5, 0.5, -1.0], [0.5, 0.5, 1.0], [3.0, 3.0, 0.2]], [[0, 1]]),  # an edge pierces the interior
        ([[0.5, 0.5, 4.0], [0.5, 0.5, 6.0], [3.0, 3.0, 5.2]], []),  # lifted clear of it
        ([[0.5, 0.5, 0.0], [0.5, 0.5, 2.0], [3.0, 3.0, 1.2]], []),  # a corner on the plane: touching
        ([[0.0, 0.5, -1.0], [0.0, 0.5, 1.0], [-3.0, 3.0, 0.2]], []),  # meeting on the border x = 0 only
    ],
)
def test_two_triangles(second, expected):
    assert self_intersections(np.array(FIRST + second), [[0, 1, 2], [3, 4, 5]]).tolist() == expected


def test_a_closed_sphere_has_none_and_a_folded_one_crosses_where_it_folds():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=20.0)
    vertices, faces = np.array(sphere.vertices), np.asarray(sphere.faces)
    assert self_intersections(vertices, faces).shape == (0, 2)
    top = int(np.argmax(vertices[:, 2]))
    vertices[top] = (0.7, 0.3, -25.0)  # the north pole pulled out through the south cap
    pairs = self_intersections(vertices, faces)
    assert len(pairs) > 0
    # Every crossing is between a face of the pulled fan and one that it pierces.
    assert np.all((faces[pairs] == top).any(axis=2).sum(axis=1) == 1)


def test_the_shipped_atlas_mesh_does_not_cross_itself():
    mesh = atlas_surface(load_atlas("lite"))
    assert self_intersections(mesh.vertices, mesh.faces).shape == (0, 2)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"vertices: expected shape \(V, 3\), got \(4, 2\)"):
        self_intersections(np.zeros((4, 2)), [[0, 1, 2]])
    with pytest.raises(ValueError, match=r"faces: expected shape \(F, 3\), got \(3,\)"):
        self_intersections(np.zeros((4, 3)), [0, 1, 2])
