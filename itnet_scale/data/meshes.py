"""Triangle meshes: OFF parsing, procedural shapes, and area-uniform surface sampling.

Point-cloud shard sets are made from meshes in two ways — ModelNet-style ``.off`` files and the
demo's procedural shapes — and both go through :func:`sample_surface`, so there is one sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh: ``vertices`` float64 ``[V, 3]``, ``triangles`` int64 ``[T, 3]`` (indices into vertices)."""

    vertices: np.ndarray
    triangles: np.ndarray

    def __post_init__(self) -> None:
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3:
            raise ValueError(f"Mesh.vertices must have shape [V, 3], got {list(self.vertices.shape)}")
        if self.triangles.ndim != 2 or self.triangles.shape[1] != 3:
            raise ValueError(f"Mesh.triangles must have shape [T, 3], got {list(self.triangles.shape)}")
        if self.triangles.size and (self.triangles.min() < 0 or self.triangles.max() >= len(self.vertices)):
            raise ValueError(f"Mesh.triangles index a vertex outside 0..{len(self.vertices) - 1}")

    @classmethod
    def from_polygons(cls, vertices: np.ndarray | Sequence[Sequence[float]],
                      polygons: Sequence[Sequence[int]]) -> Mesh:
        """Build a mesh from polygons (each ≥ 3 vertex indices), triangulated as fans ``(p0, p_k, p_k+1)``."""
        triangles = [(poly[0], poly[k], poly[k + 1]) for poly in polygons for k in range(1, len(poly) - 1)]
        return cls(np.asarray(vertices, dtype=np.float64), np.asarray(triangles, dtype=np.int64).reshape(-1, 3))

    def transformed(self, matrix: np.ndarray) -> Mesh:
        """The mesh with every vertex mapped by the linear map ``matrix`` ``[3, 3]`` (``v ↦ matrix @ v``)."""
        return Mesh(self.vertices @ np.asarray(matrix, dtype=np.float64).T, self.triangles)

    def triangle_areas(self) -> np.ndarray:
        """Area of each triangle, ``[T]``."""
        a, b, c = (self.vertices[self.triangles[:, k]] for k in range(3))
        return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)


def sample_surface(mesh: Mesh, num_points: int, rng: np.random.Generator, *, normals: bool = False) -> np.ndarray:
    """Sample ``num_points`` points uniformly over the mesh's surface area; float32 ``[num_points, 3]``, or
    ``[num_points, 6]`` with ``normals``: each point followed by its triangle's unit normal (``(b − a) × (c − a)``,
    so its sign follows the triangle's winding).

    A triangle is drawn with probability proportional to its area, then a point uniformly inside
    it from two uniforms ``(u, v)`` reflected into the lower triangle when ``u + v > 1``.
    """
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    areas = mesh.triangle_areas()
    total = float(areas.sum())
    if not math.isfinite(total) or total <= 0.0:
        raise ValueError(f"mesh has no surface area to sample ({len(mesh.triangles)} triangles, total area {total})")
    chosen = rng.choice(len(areas), size=num_points, p=areas / total)
    u, v = rng.random(num_points), rng.random(num_points)
    outside = u + v > 1.0
    u[outside], v[outside] = 1.0 - u[outside], 1.0 - v[outside]
    a, b, c = (mesh.vertices[mesh.triangles[chosen, k]] for k in range(3))
    points = a + u[:, None] * (b - a) + v[:, None] * (c - a)
    if normals:  # a chosen triangle has positive area, so its cross product is never zero
        cross = np.cross(b - a, c - a)
        points = np.concatenate([points, cross / np.linalg.norm(cross, axis=1, keepdims=True)], axis=1)
    return points.astype(np.float32)


#: The header keywords :func:`parse_off` reads: plain OFF, and OFF with a colour after each vertex.
OFF_KEYWORDS = ("OFF", "COFF")


def parse_off(text: str, source: str = "<off>") -> Mesh:
    """Parse an OFF mesh (``OFF``, counts ``V F E``, ``V`` vertex rows, ``F`` rows ``k i_1 … i_k [colour]``).

    Comments (``#``) and blank lines are ignored, the counts may follow the keyword on the header line
    (``OFF490 518 0``, as in some ModelNet files), and ``COFF`` files (each vertex row followed by its colour,
    ``x y z r g b a``) read as their geometry. Hand-written because no dependency of the project reads OFF;
    errors name ``source`` and the line.
    """
    rows = [(number, line.split("#", 1)[0].split()) for number, line in enumerate(text.splitlines(), start=1)]
    rows = [(number, tokens) for number, tokens in rows if tokens]
    keyword = next((k for k in OFF_KEYWORDS if rows and rows[0][1][0].startswith(k)), None)
    if keyword is None:
        raise ValueError(f"{source}: not an OFF file (the first line must start with one of {', '.join(OFF_KEYWORDS)})")
    header_number, header = rows[0]
    fused = header[0][len(keyword):]
    counts_tokens = ([fused] if fused else []) + header[1:]
    body = rows[1:]
    if not counts_tokens:
        if not body:
            raise ValueError(f"{source}: missing the 'vertices faces edges' line")
        (header_number, counts_tokens), body = body[0], body[1:]
    try:
        num_vertices, num_faces = int(counts_tokens[0]), int(counts_tokens[1])
    except (ValueError, IndexError):
        raise ValueError(f"{source}:{header_number}: expected 'vertices faces edges' counts, "
                         f"got {' '.join(counts_tokens)!r}") from None
    if num_vertices < 0 or num_faces < 0 or len(body) < num_vertices + num_faces:
        raise ValueError(f"{source}: declares {num_vertices} vertices and {num_faces} faces "
                         f"but has {len(body)} data lines")
    vertices = np.empty((num_vertices, 3), dtype=np.float64)
    for row, (number, tokens) in enumerate(body[:num_vertices]):
        try:
            vertices[row] = [float(t) for t in tokens[:3]]
        except ValueError:
            raise ValueError(f"{source}:{number}: expected a vertex 'x y z', got {' '.join(tokens)!r}") from None
    polygons = []
    for number, tokens in body[num_vertices:num_vertices + num_faces]:
        try:
            size = int(tokens[0])
            polygon = [int(t) for t in tokens[1:1 + size]]
        except ValueError:
            raise ValueError(f"{source}:{number}: expected a face 'k i_1 ... i_k', got {' '.join(tokens)!r}") from None
        if size < 3 or len(polygon) != size:
            raise ValueError(f"{source}:{number}: a face needs k >= 3 and k vertex indices, got {' '.join(tokens)!r}")
        if min(polygon) < 0 or max(polygon) >= num_vertices:
            raise ValueError(f"{source}:{number}: face indexes a vertex outside 0..{num_vertices - 1}")
        polygons.append(polygon)
    return Mesh.from_polygons(vertices, polygons)


def read_off(path: str | Path) -> Mesh:
    """Read an OFF mesh file (see :func:`parse_off`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a text OFF file ({error})") from None
    return parse_off(text, source=str(path))


# Procedural shapes, each centred on the origin and about one unit across.


def box() -> Mesh:
    """The unit cube ``[-0.5, 0.5]^3``: 6 square faces, 12 triangles."""
    vertices = [(x, y, z) for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)]
    faces = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    return Mesh.from_polygons(vertices, faces)


def pyramid() -> Mesh:
    """A square pyramid: base ``[-0.5, 0.5]^2`` at ``z = -0.5``, apex at ``(0, 0, 0.5)``."""
    vertices = [(-0.5, -0.5, -0.5), (0.5, -0.5, -0.5), (0.5, 0.5, -0.5), (-0.5, 0.5, -0.5), (0.0, 0.0, 0.5)]
    return Mesh.from_polygons(vertices, [(0, 3, 2, 1), (0, 1, 4), (1, 2, 4), (2, 3, 4), (3, 0, 4)])


def icosphere(subdivisions: int = 2) -> Mesh:
    """A sphere of radius 0.5: an icosahedron with each triangle split in four ``subdivisions`` times."""
    phi = (1.0 + math.sqrt(5.0)) / 2.0
    vertices = [(-1, phi, 0), (1, phi, 0), (-1, -phi, 0), (1, -phi, 0), (0, -1, phi), (0, 1, phi),
                (0, -1, -phi), (0, 1, -phi), (phi, 0, -1), (phi, 0, 1), (-phi, 0, -1), (-phi, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11),
             (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    points = [np.array(v, dtype=np.float64) for v in vertices]
    midpoints: dict[tuple[int, int], int] = {}  # edge -> index of its midpoint (edges never recur across levels)

    def midpoint(i: int, j: int) -> int:
        key = (min(i, j), max(i, j))
        if key not in midpoints:
            midpoints[key] = len(points)
            points.append((points[i] + points[j]) / 2.0)
        return midpoints[key]

    for _ in range(subdivisions):
        faces = [tri for a, b, c in faces for tri in
                 ((a, midpoint(a, b), midpoint(a, c)), (b, midpoint(b, c), midpoint(a, b)),
                  (c, midpoint(a, c), midpoint(b, c)), (midpoint(a, b), midpoint(b, c), midpoint(a, c)))]
    unit = np.stack(points) / np.linalg.norm(np.stack(points), axis=1, keepdims=True)
    return Mesh.from_polygons(0.5 * unit, faces)


def _ring(segments: int, radius: float, z: float) -> list[tuple[float, float, float]]:
    angles = 2.0 * math.pi * np.arange(segments) / segments
    return [(radius * math.cos(a), radius * math.sin(a), z) for a in angles]


def cylinder(segments: int = 32) -> Mesh:
    """A closed cylinder of radius 0.5 along z from -0.5 to 0.5 (side quads, polygon caps)."""
    vertices = _ring(segments, 0.5, -0.5) + _ring(segments, 0.5, 0.5)
    sides = [(k, (k + 1) % segments, segments + (k + 1) % segments, segments + k) for k in range(segments)]
    caps = [tuple(range(segments - 1, -1, -1)), tuple(range(segments, 2 * segments))]
    return Mesh.from_polygons(vertices, sides + caps)


def cone(segments: int = 32) -> Mesh:
    """A closed cone: base circle of radius 0.5 at ``z = -0.5``, apex at ``(0, 0, 0.5)``."""
    vertices = [*_ring(segments, 0.5, -0.5), (0.0, 0.0, 0.5)]
    sides = [(k, (k + 1) % segments, segments) for k in range(segments)]
    return Mesh.from_polygons(vertices, [*sides, tuple(range(segments - 1, -1, -1))])


def torus(major_segments: int = 32, minor_segments: int = 16, major_radius: float = 0.35,
          minor_radius: float = 0.15) -> Mesh:
    """A torus around the z axis: tube of radius ``minor_radius`` on a circle of radius ``major_radius``."""
    u = 2.0 * math.pi * np.arange(major_segments)[:, None] / major_segments
    v = 2.0 * math.pi * np.arange(minor_segments)[None, :] / minor_segments
    ring = major_radius + minor_radius * np.cos(v)  # distance from the z axis, [1, minor]
    x, y, z = np.broadcast_arrays(ring * np.cos(u), ring * np.sin(u), minor_radius * np.sin(v))
    vertices = np.stack([x, y, z], axis=-1).reshape(-1, 3)

    def index(i: int, j: int) -> int:
        return (i % major_segments) * minor_segments + j % minor_segments

    quads = [(index(i, j), index(i + 1, j), index(i + 1, j + 1), index(i, j + 1))
             for i in range(major_segments) for j in range(minor_segments)]
    return Mesh.from_polygons(vertices, quads)


#: The demo's shape classes, in class-index order.
SHAPES: dict[str, Callable[[], Mesh]] = {
    "box": box, "sphere": icosphere, "cylinder": cylinder, "cone": cone, "torus": torus, "pyramid": pyramid,
}


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix ``[3, 3]`` drawn uniformly from SO(3): the matrix of a normalized Gaussian quaternion."""
    w, x, y, z = rng.standard_normal(4)
    norm = math.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / norm, x / norm, y / norm, z / norm
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
