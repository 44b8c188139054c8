"""The renderer draws what its factors say, and deterministically."""

import numpy as np
import pytest

from scfail import render


def _factors(shapes, colors, seed=0, shift='none'):
  rng = np.random.default_rng(seed)
  return render.sample_factors(
    rng, np.asarray(shapes), np.asarray(colors), shift
  )


def _centred(shape: int, color: int, scale=0.3, rotation=0.0):
  f = _factors([shape], [color])
  f['x'][:] = 0.5
  f['y'][:] = 0.5
  f['scale'][:] = scale
  f['rotation'][:] = rotation
  return f


@pytest.mark.parametrize('color', range(len(render.COLORS)))
def test_object_pixels_fall_in_their_hue_band(color):
  f = _centred(0, color)
  image = render.render(f, 32)[0]
  masks = render.render_masks(f, 32)[0]
  # Interior pixels only: edges are blended with the background.
  interior = masks & np.roll(masks, 1, 0) & np.roll(masks, -1, 0)
  interior &= np.roll(masks, 1, 1) & np.roll(masks, -1, 1)
  hue = render.rgb_to_hue(image[interior] / 255.0)
  centre = render.COLOR_HUES[color]
  distance = np.abs((hue - centre + 0.5) % 1.0 - 0.5)
  # Jitter plus the rounding of 8-bit values.
  assert distance.max() <= render.HUE_JITTER + 0.01
  # ...and no other band is as close.
  others = np.delete(render.COLOR_HUES, color)
  other_distance = np.abs((hue[:, None] - others + 0.5) % 1.0 - 0.5)
  assert (other_distance.min(1) > distance).all()


def test_areas_match_the_geometry():
  size, scale = 160, 0.3
  radius_px = scale * size
  expected = {
    'circle': np.pi * (0.9 * radius_px) ** 2,
    'square': (2 * 0.72 * radius_px) ** 2,
    # Regular n-gon of circumradius R: n/2 R^2 sin(2 pi / n).
    'triangle': 1.5 * radius_px**2 * np.sin(2 * np.pi / 3),
    'hexagon': 3 * (0.93 * radius_px) ** 2 * np.sin(np.pi / 3),
    # Rhombus with half-diagonals 0.55 R and R.
    'diamond': 2 * 0.55 * radius_px**2,
    # Cross: two 1.84 R x 0.6 R bars minus their 0.6 R square overlap.
    'cross': (2 * 1.84 * 0.6 - 0.36) * radius_px**2,
  }
  for name, area in expected.items():
    f = _centred(render.SHAPES.index(name), 0, scale)
    measured = render.render_masks(f, size)[0].sum()
    assert abs(measured - area) / area < 0.03, (name, measured, area)


def test_different_shapes_give_different_masks():
  masks = [render.render_masks(_centred(s, 0), 32)[0] for s in range(8)]
  for i in range(8):
    for j in range(i + 1, 8):
      differing = (masks[i] != masks[j]).sum()
      assert differing >= 10, (render.SHAPES[i], render.SHAPES[j])


def test_rotation_keeps_the_shape_and_moves_pixels():
  square = render.SHAPES.index('square')
  a = render.render_masks(_centred(square, 0, 0.3, 0.0), 64)[0]
  b = render.render_masks(_centred(square, 0, 0.3, np.pi / 4), 64)[0]
  c = render.render_masks(_centred(square, 0, 0.3, np.pi / 2), 64)[0]
  assert (a != b).sum() > 50
  assert (a != c).sum() <= 8  # A quarter turn maps a square onto itself.
  assert abs(int(a.sum()) - int(b.sum())) < 0.05 * a.sum()


def test_same_seed_same_bytes_other_seed_other_bytes():
  shapes, colors = np.arange(16) % 8, np.arange(16) // 2
  for shift in render.SHIFTS:
    one = render.render(_factors(shapes, colors, 1, shift), 32)
    again = render.render(_factors(shapes, colors, 1, shift), 32)
    other = render.render(_factors(shapes, colors, 2, shift), 32)
    assert one.dtype == np.uint8 and one.shape == (16, 32, 32, 3)
    assert one.tobytes() == again.tobytes()
    assert one.tobytes() != other.tobytes()


def test_edges_are_anti_aliased():
  image = render.render(_centred(0, 0, 0.3), 32)[0].astype(int)
  red = image[..., 0]
  background = red[0, 0]
  inside = red[16, 16]
  between = (red > background + 10) & (red < inside - 10)
  assert between.sum() >= 8


def test_grayscale_removes_color_and_lighting_shifts_it():
  gray = render.render(_factors(np.arange(8), np.arange(8), 0, 'grayscale'), 32)
  assert (gray[..., 0] == gray[..., 1]).all()
  assert (gray[..., 1] == gray[..., 2]).all()
  f = _factors(np.arange(8), np.arange(8), 0, 'lighting')
  assert not np.allclose(f['brightness'], 1.0)
  plain = _factors(np.arange(8), np.arange(8), 0, 'none')
  assert np.allclose(plain['brightness'], 1.0)
  assert (plain['texture'] == 0).all() and not plain['clutter'].any()


def test_unknown_shift_is_refused():
  with pytest.raises(ValueError, match='Unknown shift'):
    _factors([0], [0], shift='fog')
