"""Self-intersections of a triangle mesh: pairs of faces that cross each other.

A carried mesh (``surface.stl``: the atlas mesh moved by the registration's displacement) can fold
where the displacement is not invertible; a folded mesh crosses itself, which a 3D printer or a
planning tool rejects.

Method: candidate pairs are the faces whose centroids lie within twice the largest centroid-to-corner
distance (a k-d tree: every pair of triangles that touch is among them) and whose bounding boxes
overlap; a pair crosses when an edge of one passes through the interior of the other (segment-triangle
test of Möller and Trumbore, 1997, with a relative tolerance, so that faces meeting along an edge
or at a corner do not count). Pairs that share a vertex are skipped (a closed mesh's neighbours
touch by construction), and so are coplanar overlaps (measure zero for a carried mesh).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

TOLERANCE = 1e-9  # relative: barycentric and segment parameters within this of an edge do not count


def _segments_cross_triangles(start: np.ndarray, end: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: segment ``start[n] -> end[n]`` passes through the interior of ``triangles[n]``.

    Args:
        start, end: ``(N, 3)`` mm.
        triangles: ``(N, 3, 3)`` mm, corners along axis 1.
    """
    direction = end - start
    edge_1 = triangles[:, 1] - triangles[:, 0]
    edge_2 = triangles[:, 2] - triangles[:, 0]
    h = np.cross(direction, edge_2)
    determinant = np.einsum("nd,nd->n", edge_1, h)
    scale = np.linalg.norm(direction, axis=1) * np.linalg.norm(edge_1, axis=1) * np.linalg.norm(edge_2, axis=1)
    valid = np.abs(determinant) > TOLERANCE * scale  # not parallel to the triangle's plane
    inverse = np.where(valid, 1.0 / np.where(valid, determinant, 1.0), 0.0)
    offset = start - triangles[:, 0]
    u = inverse * np.einsum("nd,nd->n", offset, h)
    q = np.cross(offset, edge_1)
    v = inverse * np.einsum("nd,nd->n", direction, q)
    t = inverse * np.einsum("nd,nd->n", edge_2, q)
    inside = (u > TOLERANCE) & (v > TOLERANCE) & (u + v < 1 - TOLERANCE)
    return valid & inside & (t > TOLERANCE) & (t < 1 - TOLERANCE)


def self_intersections(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """The pairs of faces of a mesh that cross each other (module doc).

    Args:
        vertices: ``(V, 3)`` mm.
        faces: ``(F, 3)`` vertex indices.

    Returns:
        ``(P, 2)`` int face indices, each pair once (first < second); empty: no self-intersection.

    Raises:
        ValueError: shapes other than ``(V, 3)`` and ``(F, 3)``.
    """
    vertices, faces = np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices: expected shape (V, 3), got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces: expected shape (F, 3), got {faces.shape}")
    triangles = vertices[faces]  # (F, 3 corners, 3)
    centroids = triangles.mean(axis=1)
    reach = float(np.linalg.norm(triangles - centroids[:, None], axis=2).max())
    pairs = cKDTree(centroids).query_pairs(2 * reach, output_type="ndarray")  # (P, 2), first < second
    if len(pairs) == 0:
        return pairs.astype(np.int64)
    first, second = faces[pairs[:, 0]], faces[pairs[:, 1]]
    shares_vertex = (first[:, :, None] == second[:, None, :]).any(axis=(1, 2))
    low, high = triangles.min(axis=1), triangles.max(axis=1)
    boxes_overlap = np.all((low[pairs[:, 0]] <= high[pairs[:, 1]]) & (low[pairs[:, 1]] <= high[pairs[:, 0]]), axis=1)
    pairs = pairs[~shares_vertex & boxes_overlap]
    a, b = triangles[pairs[:, 0]], triangles[pairs[:, 1]]
    crossing = np.zeros(len(pairs), dtype=bool)
    for corner in range(3):  # each edge of each triangle against the other triangle
        following = (corner + 1) % 3
        crossing |= _segments_cross_triangles(a[:, corner], a[:, following], b)
        crossing |= _segments_cross_triangles(b[:, corner], b[:, following], a)
    return pairs[crossing].astype(np.int64)
