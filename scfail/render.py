"""Procedural renderer of one colored shape on a background.

Everything here is NumPy and vectorised over a batch of images: a batch of
factor values (`sample_factors`) goes in, a batch of uint8 images
(`render`) comes out. The same factors always give the same bytes.

Shapes live in a local frame where the circumradius is about 1; `scale` is
that radius as a fraction of the image side. Colors are hue bands: an
object's hue is its band's centre plus jitter, with saturation and value
drawn from high ranges so that a person names the color at a glance.

Shift factors, never present in training images, are applied by name:
`texture` (stripes, checks or dots on the object), `lighting` (global
brightness and color cast), `scale` (objects smaller or larger than in
training), `background` (cluttered, colored backgrounds) and `grayscale`.
"""

from __future__ import annotations

import numpy as np

SHAPES = (
  'circle',
  'square',
  'triangle',
  'pentagon',
  'hexagon',
  'star',
  'cross',
  'diamond',
)
COLORS = (
  'red',
  'orange',
  'yellow',
  'green',
  'cyan',
  'blue',
  'purple',
  'pink',
)
# Centre of each color's hue band, as a fraction of the hue circle.
COLOR_HUES = np.array([0, 30, 56, 120, 183, 225, 275, 322]) / 360.0
HUE_JITTER = 8 / 360.0
SATURATION_RANGE = (0.7, 1.0)
VALUE_RANGE = (0.75, 1.0)

TEXTURES = ('none', 'stripes', 'checks', 'dots')
SHIFTS = ('none', 'texture', 'lighting', 'scale', 'background', 'grayscale')

TRAIN_SCALE_RANGE = (0.2, 0.32)
SMALL_SCALE_RANGE = (0.1, 0.14)
LARGE_SCALE_RANGE = (0.4, 0.46)
BACKGROUND_VALUE_RANGE = (0.05, 0.4)
BACKGROUND_MAX_SATURATION = 0.2
NUM_CLUTTER_BLOBS = 6

FactorBatch = dict[str, np.ndarray]


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
  """Converts [..., 3] HSV values in [0, 1] to RGB values in [0, 1]."""
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  i = np.floor(h * 6.0)
  f = h * 6.0 - i
  p = v * (1.0 - s)
  q = v * (1.0 - s * f)
  t = v * (1.0 - s * (1.0 - f))
  i = i.astype(np.int64) % 6
  r = np.choose(i, [v, q, p, p, t, v])
  g = np.choose(i, [t, v, v, q, p, p])
  b = np.choose(i, [p, p, t, v, v, q])
  return np.stack([r, g, b], axis=-1)


def rgb_to_hue(rgb: np.ndarray) -> np.ndarray:
  """Returns the hue in [0, 1) of [..., 3] RGB values."""
  rgb = np.asarray(rgb, np.float64)
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  mx = rgb.max(-1)
  delta = mx - rgb.min(-1)
  safe = np.where(delta > 0, delta, 1.0)
  hue = np.where(
    mx == r,
    ((g - b) / safe) % 6.0,
    np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
  )
  return np.where(delta > 0, hue / 6.0, 0.0) % 1.0


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float], n: int):
  return rng.uniform(lo_hi[0], lo_hi[1], size=n)


def sample_factors(
  rng: np.random.Generator,
  shapes: np.ndarray,
  colors: np.ndarray,
  shift: str = 'none',
) -> FactorBatch:
  """Draws every factor of variation for a batch of objects.

  Args:
    rng: the source of randomness; the same state gives the same factors.
    shapes: int array [n], indices into `SHAPES`.
    colors: int array [n], indices into `COLORS`.
    shift: one of `SHIFTS`; 'none' draws training-like factors.

  Returns:
    A dict of arrays with a leading dimension n: `shape`, `color`, `x`, `y`
    (object centre as a fraction of the image side), `scale`, `rotation`
    (radians), `hue`, `saturation`, `value`, `background` (RGB in [0, 1]),
    `texture` (index into `TEXTURES`), `brightness`, `cast` (RGB gains),
    `clutter` and `grayscale` (bools).
  """
  if shift not in SHIFTS:
    raise ValueError(f'Unknown shift {shift!r}; expected one of {SHIFTS}.')
  shapes = np.asarray(shapes, np.int64)
  colors = np.asarray(colors, np.int64)
  n = shapes.shape[0]

  if shift == 'scale':
    small = rng.random(n) < 0.5
    scale = np.where(
      small,
      _uniform(rng, SMALL_SCALE_RANGE, n),
      _uniform(rng, LARGE_SCALE_RANGE, n),
    )
  else:
    scale = _uniform(rng, TRAIN_SCALE_RANGE, n)
  # Keep the whole object inside the frame.
  margin = np.minimum(scale, 0.49)
  x = margin + rng.random(n) * (1.0 - 2.0 * margin)
  y = margin + rng.random(n) * (1.0 - 2.0 * margin)
  rotation = rng.uniform(0.0, 2.0 * np.pi, size=n)

  hue = (COLOR_HUES[colors] + rng.uniform(-1, 1, size=n) * HUE_JITTER) % 1.0
  saturation = _uniform(rng, SATURATION_RANGE, n)
  value = _uniform(rng, VALUE_RANGE, n)

  background_hsv = np.stack(
    [
      rng.random(n),
      rng.uniform(0.0, BACKGROUND_MAX_SATURATION, size=n),
      _uniform(rng, BACKGROUND_VALUE_RANGE, n),
    ],
    axis=-1,
  )
  background = hsv_to_rgb(background_hsv)

  texture = np.zeros(n, np.int64)
  if shift == 'texture':
    texture = rng.integers(1, len(TEXTURES), size=n)
  brightness = np.ones(n)
  cast = np.ones((n, 3))
  if shift == 'lighting':
    dark = rng.random(n) < 0.5
    brightness = np.where(
      dark, rng.uniform(0.35, 0.55, size=n), rng.uniform(1.3, 1.6, size=n)
    )
    cast = rng.uniform(0.7, 1.3, size=(n, 3))
  return {
    'shape': shapes,
    'color': colors,
    'x': x,
    'y': y,
    'scale': scale,
    'rotation': rotation,
    'hue': hue,
    'saturation': saturation,
    'value': value,
    'background': background,
    'texture': texture,
    'brightness': brightness,
    'cast': cast,
    'clutter': np.full(n, shift == 'background'),
    'grayscale': np.full(n, shift == 'grayscale'),
  }


def _regular_polygon(x, y, sides: int, radius: float):
  """Inside test of a regular polygon with a vertex pointing up."""
  r = np.hypot(x, y)
  theta = np.arctan2(y, x) - np.pi / 2
  sector = 2 * np.pi / sides
  t = np.mod(theta, sector) - sector / 2
  return r * np.cos(t) <= radius * np.cos(np.pi / sides)


def _star(x, y, points: int = 5, outer: float = 1.0, inner: float = 0.42):
  """Inside test of a star polygon with a point pointing up."""
  r = np.hypot(x, y)
  theta = np.arctan2(y, x) - np.pi / 2
  half = np.pi / points
  t0 = np.mod(theta, 2 * half)
  t = half - np.abs(t0 - half)  # 0 at an outer vertex, `half` at an inner.
  px, py = r * np.cos(t), r * np.sin(t)
  bx, by = inner * np.cos(half), inner * np.sin(half)
  dx, dy = bx - outer, by
  return dx * py - dy * (px - outer) >= 0


def shape_mask(shape: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Inside test of shape index `shape` at local coordinates (x, y)."""
  name = SHAPES[shape]
  ax, ay = np.abs(x), np.abs(y)
  if name == 'circle':
    return x * x + y * y <= 0.9**2
  if name == 'square':
    return np.maximum(ax, ay) <= 0.72
  if name == 'triangle':
    return _regular_polygon(x, y, 3, 1.0)
  if name == 'pentagon':
    return _regular_polygon(x, y, 5, 0.95)
  if name == 'hexagon':
    return _regular_polygon(x, y, 6, 0.93)
  if name == 'star':
    return _star(x, y)
  if name == 'cross':
    return (np.maximum(ax, ay) <= 0.92) & (np.minimum(ax, ay) <= 0.3)
  if name == 'diamond':
    return ax / 0.55 + ay / 1.0 <= 1.0
  raise ValueError(f'Unknown shape index {shape}.')


def _pixel_grid(image_size: int, supersample: int) -> np.ndarray:
  """Sample positions in [0, 1], [image_size * supersample] of them."""
  k = image_size * supersample
  return ((np.arange(k) + 0.5) / k).astype(np.float32)


def _texture_pattern(factors, index, u, v, image_size):
  """1 where the texture darkens the object, for the images in `index`."""
  texture = factors['texture'][index][:, None, None]
  angle = factors['rotation'][index][:, None, None]
  period = 5.0 / image_size + 0.07  # A few pixels at any resolution.
  a = (u * np.cos(angle) + v * np.sin(angle)) / period
  b = (-u * np.sin(angle) + v * np.cos(angle)) / period
  stripes = np.floor(a) % 2
  checks = (np.floor(a) + np.floor(b)) % 2
  fa, fb = a - np.floor(a) - 0.5, b - np.floor(b) - 0.5
  dots = (fa * fa + fb * fb <= 0.3**2).astype(np.float64)
  return np.where(
    texture == 1, stripes, np.where(texture == 2, checks, dots)
  ) * (texture > 0)


def _clutter(rng_seed: np.ndarray, n: int, u, v):
  """Cluttered colored backgrounds: overlapping saturated discs."""
  canvas = np.zeros((n,) + u.shape[1:] + (3,))
  covered = np.zeros((n,) + u.shape[1:])
  rng = np.random.default_rng(rng_seed)
  for _ in range(NUM_CLUTTER_BLOBS):
    cx, cy = rng.random((2, n, 1, 1))
    radius = rng.uniform(0.08, 0.25, size=(n, 1, 1))
    rgb = hsv_to_rgb(
      np.stack(
        [
          rng.random(n),
          rng.uniform(0.5, 1.0, n),
          rng.uniform(0.3, 0.8, n),
        ],
        -1,
      )
    )
    inside = (u - cx) ** 2 + (v - cy) ** 2 <= radius**2
    canvas = np.where(inside[..., None], rgb[:, None, None, :], canvas)
    covered = np.maximum(covered, inside)
  return canvas, covered


def render(
  factors: FactorBatch,
  image_size: int,
  supersample: int | None = None,
  noise_seed: int | None = None,
) -> np.ndarray:
  """Renders a batch of images from their factors.

  Args:
    factors: as returned by `sample_factors`.
    image_size: side of the square output images, in pixels.
    supersample: samples per pixel side; edges are anti-aliased by
      averaging them. By default 4 at 32 px, 2 at 64 px and above.
    noise_seed: seeds the clutter of `background` shifts; by default it is
      derived from the factors themselves, so the output is a pure function
      of its inputs.

  Returns:
    uint8 array [n, image_size, image_size, 3].
  """
  n = factors['shape'].shape[0]
  supersample = supersample or max(2, 128 // image_size)
  grid = _pixel_grid(image_size, supersample)
  v, u = np.meshgrid(grid, grid, indexing='ij')  # v: rows, u: columns.
  u, v = u[None], v[None]

  # Coverage of the object at each supersample, shape by shape.
  coverage = np.zeros((n,) + u.shape[1:], np.float32)
  for shape in np.unique(factors['shape']):
    index = np.nonzero(factors['shape'] == shape)[0]
    cx = factors['x'][index][:, None, None].astype(np.float32)
    cy = factors['y'][index][:, None, None].astype(np.float32)
    scale = factors['scale'][index][:, None, None].astype(np.float32)
    angle = factors['rotation'][index][:, None, None].astype(np.float32)
    # Image rows grow downwards; flip so that 'up' in the shape is up.
    du, dv = (u - cx) / scale, -(v - cy) / scale
    lx = du * np.cos(angle) + dv * np.sin(angle)
    ly = -du * np.sin(angle) + dv * np.cos(angle)
    coverage[index] = shape_mask(int(shape), lx, ly)

  # Average the supersamples into pixels: this is the anti-aliasing.
  s = supersample
  alpha = coverage.reshape(n, image_size, s, image_size, s).mean((2, 4))
  alpha = alpha[..., None]
  pixels = _pixel_grid(image_size, 1)
  v, u = np.meshgrid(pixels, pixels, indexing='ij')
  u, v = u[None], v[None]

  hsv = np.stack([factors['hue'], factors['saturation'], factors['value']], -1)
  object_rgb = np.broadcast_to(
    hsv_to_rgb(hsv)[:, None, None, :].astype(np.float32), alpha.shape[:3] + (3,)
  )
  textured = np.nonzero(factors['texture'] > 0)[0]
  if textured.size:
    pattern = _texture_pattern(factors, textured, u, v, image_size)
    object_rgb = object_rgb.copy()
    object_rgb[textured] *= 1.0 - 0.55 * pattern[..., None]

  background = np.broadcast_to(
    factors['background'][:, None, None, :].astype(np.float32),
    alpha.shape[:3] + (3,),
  )
  cluttered = np.nonzero(factors['clutter'])[0]
  if cluttered.size:
    if noise_seed is None:
      noise_seed = int(
        np.frombuffer(np.asarray(factors['x'][cluttered]).tobytes(), np.uint32)
        .astype(np.uint64)
        .sum()
        % (2**32)
      )
    canvas, covered = _clutter(noise_seed, cluttered.size, u, v)
    background = background.copy()
    background[cluttered] = np.where(
      covered[..., None] > 0, canvas, background[cluttered]
    )

  image = alpha * object_rgb + (1.0 - alpha) * background

  image = image * factors['brightness'][:, None, None, None]
  image = image * factors['cast'][:, None, None, :]
  gray = factors['grayscale']
  if gray.any():
    luma = image @ np.array([0.299, 0.587, 0.114])
    image = np.where(
      gray[:, None, None, None], luma[..., None].repeat(3, -1), image
    )
  return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def render_masks(factors: FactorBatch, image_size: int) -> np.ndarray:
  """Boolean object masks [n, image_size, image_size], one sample a pixel."""
  n = factors['shape'].shape[0]
  grid = _pixel_grid(image_size, 1)
  v, u = np.meshgrid(grid, grid, indexing='ij')
  masks = np.zeros((n, image_size, image_size), bool)
  for i in range(n):
    du = (u - factors['x'][i]) / factors['scale'][i]
    dv = -(v - factors['y'][i]) / factors['scale'][i]
    a = factors['rotation'][i]
    lx = du * np.cos(a) + dv * np.sin(a)
    ly = -du * np.sin(a) + dv * np.cos(a)
    masks[i] = shape_mask(int(factors['shape'][i]), lx, ly)
  return masks
