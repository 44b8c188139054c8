"""The study's benchmark layer: seen and unseen pairs, the training mixture.

Dataset splits hold every shape-color pair. This module decides which pairs
training may see (`holdout`), how training draws from them (`Mixture`) and
which examples each benchmark scores (`BENCHMARKS`).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """A test set of the study.

  Attributes:
    name: the key used in metrics, `eval/<name>/...`.
    split: the dataset split it reads.
    pairs: which pairs it keeps: 'seen', 'unseen', 'conflict' (seen pairs
      whose color is the diagnostic color of another shape, so that shape
      bias is not mixed with zero-shot failures) or 'all'.
    scores: the attributes it scores, among 'shape' and 'color'.
  """

  name: str
  split: str
  pairs: str
  scores: tuple[str, ...]


BENCHMARKS: dict[str, Benchmark] = {
  b.name: b
  for b in (
    Benchmark('iid', 'test', 'seen', ('shape', 'color')),
    Benchmark('unseen_pairs', 'test', 'unseen', ('shape', 'color')),
    Benchmark('texture', 'test_texture', 'seen', ('shape', 'color')),
    Benchmark('lighting', 'test_lighting', 'seen', ('shape', 'color')),
    Benchmark('scale', 'test_scale', 'seen', ('shape', 'color')),
    Benchmark('background', 'test_background', 'seen', ('shape', 'color')),
    Benchmark('grayscale', 'test_grayscale', 'seen', ('shape',)),
    Benchmark('cue_conflict', 'test', 'conflict', ('shape', 'color')),
  )
}


def diagnostic_colors(num_shapes: int, num_colors: int) -> np.ndarray:
  """The color each shape comes in most often when `correlation` > 0."""
  return (np.arange(num_shapes) * num_colors) // num_shapes


def holdout(
  num_shapes: int, num_colors: int, unseen_per_attribute: int
) -> np.ndarray:
  """Boolean [num_shapes, num_colors]: True where a pair is seen.

  The hold-out is circulant: shape s is unseen with the colors at a few
  fixed offsets from its diagnostic color, spread over the color circle, so
  that every shape and (for a square table) every color has exactly
  `unseen_per_attribute` unseen partners, and diagnostic pairs stay seen.

  Raises:
    ValueError: more unseen partners asked for than leave a shape seen with
      most of its colors.
  """
  limit = (min(num_shapes, num_colors) - 1) // 2
  if not 0 <= unseen_per_attribute <= limit:
    raise ValueError(
      f'config.unseen_pairs_per_attribute={unseen_per_attribute} is out of '
      f'range: with {num_shapes} shapes and {num_colors} colors it must be '
      f'in [0, {limit}] so that every shape and color stays seen with most '
      'partners.'
    )
  seen = np.ones((num_shapes, num_colors), bool)
  if unseen_per_attribute == 0:
    return seen
  diag = diagnostic_colors(num_shapes, num_colors)
  step = (num_colors - 1) / unseen_per_attribute
  offsets = [1 + int(step * (j + 0.5)) for j in range(unseen_per_attribute)]
  for s in range(num_shapes):
    for offset in offsets:
      seen[s, (diag[s] + offset) % num_colors] = False
  return seen


def pair_filter(benchmark: Benchmark, seen: np.ndarray) -> np.ndarray:
  """Boolean [num_shapes, num_colors]: True where `benchmark` keeps a pair."""
  num_shapes, num_colors = seen.shape
  if benchmark.pairs == 'seen':
    return seen.copy()
  if benchmark.pairs == 'unseen':
    return ~seen
  if benchmark.pairs == 'all':
    return np.ones_like(seen)
  if benchmark.pairs == 'conflict':
    keep = np.zeros_like(seen)
    diag = diagnostic_colors(num_shapes, num_colors)
    is_diagnostic = np.zeros_like(seen)
    is_diagnostic[np.arange(num_shapes), diag] = True
    # The color is diagnostic of some shape, but not of this one.
    keep[:, diag] = True
    return keep & ~is_diagnostic & seen
  raise ValueError(f'Unknown pair set {benchmark.pairs!r}.')


def conflict_shape(colors: np.ndarray, num_shapes: int, num_colors: int):
  """The shape whose diagnostic color is `colors` (-1 where none is)."""
  table = np.full(num_colors, -1)
  diag = diagnostic_colors(num_shapes, num_colors)
  table[diag] = np.arange(num_shapes)
  return table[colors]


@dataclasses.dataclass(frozen=True)
class Mixture:
  """How training draws shape-color pairs.

  A shape is drawn uniformly; with probability `correlation` it comes in its
  diagnostic color, otherwise in a color drawn uniformly from its seen
  partners. Unseen pairs are never drawn.
  """

  seen: np.ndarray
  correlation: float

  def pair_probabilities(self) -> np.ndarray:
    """[num_shapes, num_colors] probabilities of drawing each pair."""
    num_shapes, num_colors = self.seen.shape
    diag = diagnostic_colors(num_shapes, num_colors)
    partners = self.seen / self.seen.sum(1, keepdims=True)
    probs = (1.0 - self.correlation) * partners
    probs[np.arange(num_shapes), diag] += self.correlation
    return probs / num_shapes
