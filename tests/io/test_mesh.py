"""``write_mesh`` (:mod:`biplanar.io.mesh`): each format read back with the vertices and faces written."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from biplanar.io.mesh import MESH_FORMATS, TriangleMesh, write_mesh


def read_vtk_polydata(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(V, 3)`` points and ``(F, 3)`` triangles of a binary legacy VTK POLYDATA file (the VTK file
    format's specification: big-endian float32 points, int32 polygons as ``count, corners``)."""
    header = data.split(b"\nPOINTS ", 1)[0].split(b"\n")
    assert header[0] == b"# vtk DataFile Version 3.0" and header[2:] == [b"BINARY", b"DATASET POLYDATA"]
    points_line, rest = data.split(b"\nPOINTS ", 1)[1].split(b"\n", 1)
    count, kind = points_line.split()
    assert kind == b"float"
    points = np.frombuffer(rest[: 12 * int(count)], ">f4").reshape(-1, 3)
    polygons_line, rest = rest[12 * int(count) :].lstrip(b"\n").split(b"\n", 1)
    keyword, faces, size = polygons_line.split()
    assert keyword == b"POLYGONS" and int(size) == 4 * int(faces)
    polygons = np.frombuffer(rest[: 4 * int(size)], ">i4").reshape(-1, 4)
    assert np.all(polygons[:, 0] == 3) and rest[4 * int(size) :] == b"\n"
    return points, polygons[:, 1:]


@pytest.fixture(scope="module")
def mesh():
    """A closed mesh in world mm with its vertices shuffled: an order that no writer could restore."""
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=23.5)
    order = np.random.default_rng(0).permutation(len(sphere.vertices))
    inverse = np.argsort(order)
    return TriangleMesh(np.asarray(sphere.vertices)[order] + [10.0, -4.0, 30.0], inverse[np.asarray(sphere.faces)])


@pytest.mark.parametrize("file_type", MESH_FORMATS)
def test_each_format_reads_back_with_the_same_mesh(mesh, file_type, tmp_path):
    path = tmp_path / f"surface.{file_type}"
    write_mesh(path, mesh)
    assert [entry.name for entry in tmp_path.iterdir()] == [path.name]  # written atomically
    if file_type == "vtk":
        vertices, faces = read_vtk_polydata(path.read_bytes())
    else:
        loaded = trimesh.load(path, process=file_type == "stl")  # STL stores corners: merge them back
        vertices, faces = np.asarray(loaded.vertices), np.asarray(loaded.faces)
    assert vertices.shape == mesh.vertices.shape and faces.shape == mesh.faces.shape
    if file_type == "stl":  # the same surface, vertices in another order
        np.testing.assert_allclose(np.sort(vertices, axis=0), np.sort(mesh.vertices, axis=0), atol=1e-5)
        assert trimesh.Trimesh(vertices, faces).volume == pytest.approx(mesh.volume, rel=1e-5)
    else:  # PLY, OBJ and VTK keep the order: the correspondence between patients' meshes
        np.testing.assert_allclose(vertices, mesh.vertices, atol=1e-5)
        np.testing.assert_array_equal(faces, mesh.faces)


def test_an_unknown_suffix_is_refused(mesh, tmp_path):
    with pytest.raises(ValueError, match=r"expected a mesh suffix of stl, ply, obj, vtk, got '\.off'"):
        write_mesh(tmp_path / "surface.off", mesh)
    assert list(tmp_path.iterdir()) == []


def test_label_surface_is_the_outer_surface_of_the_largest_piece():
    """A hollow ball beside a small cube: one closed surface, the ball's outside (cavity filled)."""
    from biplanar.geometry.volume_grid import VolumeGrid
    from biplanar.io.mesh import label_surface

    grid = VolumeGrid((40, 40, 40), np.diag([1.0, 1.0, 1.0, 1.0]))
    distance = np.linalg.norm(np.indices(grid.shape).transpose(1, 2, 3, 0) - 19.5, axis=-1)
    labels = ((distance <= 12.0) & (distance > 6.0)).astype(np.uint8)
    labels[1:4, 1:4, 1:4] = 1  # a second, smaller piece
    surface = label_surface(labels, grid)
    mesh = trimesh.Trimesh(surface.vertices, surface.faces)
    assert len(mesh.split(only_watertight=False)) == 1 and mesh.is_watertight
    assert surface.volume == pytest.approx(4 / 3 * np.pi * 12.0**3, rel=0.05)  # the cavity does not count
