"""OFF variants found in ModelNet's files (COFF colours, counts fused onto the header, comments) and surface
sampling with normals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from itnet_scale.data.meshes import box, parse_off, read_off, sample_surface

# A unit right triangle and a unit square's two halves, each vertex with an RGBA colour, as COFF files hold them.
COFF_SQUARE = """COFF
# coloured vertices: x y z r g b a
4 2 0
0 0 0 255 0 0 255
1 0 0 0 255 0 255
1 1 0 0 0 255 255
0 1 0 255 255 255 255
3 0 1 2
3 0 2 3
"""


def test_coff_reads_its_geometry_and_ignores_the_colours(tmp_path: Path) -> None:
    path = tmp_path / "square.off"
    path.write_text(COFF_SQUARE)
    mesh = read_off(path)
    assert mesh.vertices.tolist() == [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]]
    assert mesh.triangles.tolist() == [[0, 1, 2], [0, 2, 3]]
    assert mesh.triangle_areas().sum() == pytest.approx(1.0)


def test_fused_headers_comments_and_crlf_of_both_keywords() -> None:
    plain = "OFF3 1 0\r\n# a comment line\r\n0 0 0\r\n2 0 0  # trailing comment\r\n0 2 0\r\n3 0 1 2\r\n"
    coloured = "COFF3 1 0\n0 0 0 9 9 9 255\n\n2 0 0 9 9 9 255\n0 2 0 9 9 9 255\n3 0 1 2\n"
    for text in (plain, coloured):
        mesh = parse_off(text)
        assert mesh.vertices.tolist() == [[0, 0, 0], [2, 0, 0], [0, 2, 0]] and mesh.triangle_areas().tolist() == [2]


@pytest.mark.parametrize(("text", "message"), [
    ("NOFF\n3 1 0\n", r"shape\.off: not an OFF file \(the first line must start with one of OFF, COFF\)"),
    ("COFF\n", r"missing the 'vertices faces edges' line"),
    ("COFF\n3 1 0\n0 0 0 1 1 1 1\n1 0\n0 1 0 1 1 1 1\n3 0 1 2\n", r"shape\.off:4: expected a vertex"),
])
def test_off_keyword_and_vertex_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_off(text, source="shape.off")


def test_surface_samples_with_normals_are_the_same_points_plus_face_normals() -> None:
    mesh = box()
    plain = sample_surface(mesh, 2000, np.random.default_rng(5))
    with_normals = sample_surface(mesh, 2000, np.random.default_rng(5), normals=True)
    assert with_normals.dtype == np.float32 and with_normals.shape == (2000, 6)
    np.testing.assert_array_equal(with_normals[:, :3], plain)
    normals = with_normals[:, 3:]
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, rtol=1e-6)
    # on the cube each point lies on the face its normal points out of (the box's faces wind outward)
    axis = np.abs(normals).argmax(1)
    np.testing.assert_allclose(np.abs(normals).max(1), 1.0, atol=1e-6)
    rows = np.arange(len(axis))
    np.testing.assert_allclose(plain[rows, axis], 0.5 * np.sign(normals[rows, axis]), atol=1e-6)
