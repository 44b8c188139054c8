"""The study's metrics, computed on the host from per-example outputs.

All functions take NumPy arrays of log-probabilities (`shape_logp`
[n, num_shapes], `color_logp` [n, num_colors]), integer labels and a mask
that is 1 for real examples and 0 for padding, so that results are exact
whatever the number of devices.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from scfail import benchmarks


def accuracy(logp: np.ndarray, labels: np.ndarray, mask: np.ndarray):
  """Fraction of real examples whose most likely class is the label."""
  correct = (logp.argmax(-1) == labels) * mask
  return float(correct.sum() / max(mask.sum(), 1))


def confusion_matrix(
  logp: np.ndarray, labels: np.ndarray, mask: np.ndarray
) -> np.ndarray:
  """Counts [true class, predicted class] over real examples."""
  k = logp.shape[-1]
  out = np.zeros((k, k), np.int64)
  keep = mask > 0
  np.add.at(out, (labels[keep], logp.argmax(-1)[keep]), 1)
  return out


def shape_bias(
  shape_logp: np.ndarray,
  shapes: np.ndarray,
  colors: np.ndarray,
  mask: np.ndarray,
  num_colors: int,
) -> dict[str, float]:
  """Shape bias on cue-conflict images (Geirhos et al., 2019).

  In a cue-conflict image the color is the diagnostic color of another
  shape. A decision follows shape when it names the true shape, and follows
  color when it names the shape whose diagnostic color the image has.

  Returns:
    `shape_bias`: among decisions that follow either cue, the fraction that
    follow shape (NaN if none does); `neither`: the fraction of images
    whose decision follows neither cue.
  """
  num_shapes = shape_logp.shape[-1]
  keep = mask > 0
  predicted = shape_logp.argmax(-1)[keep]
  cue_shape = benchmarks.conflict_shape(colors[keep], num_shapes, num_colors)
  follows_shape = predicted == shapes[keep]
  follows_color = (predicted == cue_shape) & ~follows_shape
  either = follows_shape.sum() + follows_color.sum()
  total = max(int(keep.sum()), 1)
  return {
    'shape_bias': float(follows_shape.sum() / either) if either else np.nan,
    'neither': float(1.0 - either / total),
  }


@dataclasses.dataclass(frozen=True)
class CzslCurve:
  """Every distinct operating point of the calibration bias sweep.

  Operating point i holds for biases in (`bias_low[i]`, `bias_high[i]`);
  the intervals tile the line in increasing order (the outer bounds are one
  nat past the extreme switch points). `bias` is a bias inside each.

  Attributes:
    bias_low, bias_high, bias: float [p].
    seen_acc: pair accuracy on examples of seen pairs, float [p].
    unseen_acc: pair accuracy on examples of unseen pairs, float [p].
    harmonic_mean: of the two, float [p] (0 where both are 0).
  """

  bias_low: np.ndarray
  bias_high: np.ndarray
  bias: np.ndarray
  seen_acc: np.ndarray
  unseen_acc: np.ndarray
  harmonic_mean: np.ndarray

  @property
  def best(self) -> int:
    """The index of the best harmonic mean (the first one on ties)."""
    return int(self.harmonic_mean.argmax())

  def at_bias(self, bias: float) -> int:
    """The index of the operating point that holds at `bias`."""
    i = int(np.searchsorted(self.bias_high, bias, side='left'))
    return min(i, len(self.bias) - 1)

  def metrics(self) -> dict[str, float]:
    """The summary of `scfail.evaluate.czsl_metrics` from these points."""
    return {
      'best_seen': float(self.seen_acc.max()),
      'best_unseen': float(self.unseen_acc.max()),
      'best_hm': float(self.harmonic_mean[self.best]),
      'best_hm_bias': float(self.bias[self.best]),
      'auc': float(np.trapezoid(self.seen_acc, self.unseen_acc)),
    }


def czsl_operating_points(
  shape_logp: np.ndarray,
  color_logp: np.ndarray,
  shapes: np.ndarray,
  colors: np.ndarray,
  mask: np.ndarray,
  seen: np.ndarray,
) -> CzslCurve:
  """Seen and unseen pair accuracy at every distinct calibration bias.

  The sweep of `scfail.evaluate.czsl_metrics`, kept whole: a pair scores
  log p(shape) + log p(color), a bias b is added to unseen pairs, and each
  example's decision switches from its best seen pair to its best unseen
  pair at b = best seen score - best unseen score.

  Args:
    shape_logp: float [n, num_shapes] log-probabilities.
    color_logp: float [n, num_colors] log-probabilities.
    shapes, colors: int [n] labels.
    mask: [n], 1 for real examples and 0 for padding.
    seen: bool [num_shapes, num_colors], True where a pair is seen.
  """
  keep = np.asarray(mask) > 0
  if not keep.any():
    raise ValueError('The CZSL sweep needs at least one real example.')
  shape_logp, color_logp = shape_logp[keep], color_logp[keep]
  shapes, colors = shapes[keep], colors[keep]
  n = shape_logp.shape[0]
  scores = (shape_logp[:, :, None] + color_logp[:, None, :]).reshape(n, -1)
  seen_flat = seen.reshape(-1)
  true_pair = shapes * seen.shape[1] + colors
  true_seen = seen_flat[true_pair]

  seen_scores = np.where(seen_flat, scores, -np.inf)
  unseen_scores = np.where(~seen_flat, scores, -np.inf)
  switch = seen_scores.max(-1) - unseen_scores.max(-1)
  right_if_seen = seen_scores.argmax(-1) == true_pair
  right_if_unseen = unseen_scores.argmax(-1) == true_pair

  # Sorted by switch point, the first k examples have switched once the
  # bias passes the k-th switch point.
  order = np.argsort(switch, kind='stable')
  switch = switch[order]
  right_if_seen, right_if_unseen = right_if_seen[order], right_if_unseen[order]
  true_seen = true_seen[order]
  gain = right_if_unseen.astype(np.int64) - right_if_seen.astype(np.int64)
  start_seen = (right_if_seen & true_seen).sum()
  start_unseen = (right_if_seen & ~true_seen).sum()
  seen_hits = np.concatenate([[0], np.cumsum(gain * true_seen)]) + start_seen
  unseen_hits = (
    np.concatenate([[0], np.cumsum(gain * ~true_seen)]) + start_unseen
  )
  # k switched examples are an operating point only where the k-th and the
  # (k+1)-th switch points differ.
  distinct = np.concatenate([[True], switch[1:] != switch[:-1], [True]])
  points = np.nonzero(distinct)[0]
  seen_acc = seen_hits[points] / max(true_seen.sum(), 1)
  unseen_acc = unseen_hits[points] / max((~true_seen).sum(), 1)
  edges = np.concatenate([[switch[0] - 1.0], switch, [switch[-1] + 1.0]])
  low, high = edges[points], edges[points + 1]
  total = seen_acc + unseen_acc
  harmonic_mean = np.where(
    total > 0, 2 * seen_acc * unseen_acc / np.maximum(total, 1e-12), 0.0
  )
  return CzslCurve(
    bias_low=low,
    bias_high=high,
    bias=(low + high) / 2,
    seen_acc=seen_acc,
    unseen_acc=unseen_acc,
    harmonic_mean=harmonic_mean,
  )


def czsl_metrics(
  shape_logp: np.ndarray,
  color_logp: np.ndarray,
  shapes: np.ndarray,
  colors: np.ndarray,
  mask: np.ndarray,
  seen: np.ndarray,
) -> dict[str, float]:
  """Closed-world compositional zero-shot metrics over a calibration bias.

  Sweeps every operating point (`czsl_operating_points`) and returns
  `best_seen`, `best_unseen`, `best_hm` (harmonic mean), `best_hm_bias`
  and `auc`, the area under seen accuracy against unseen accuracy.
  """
  return czsl_operating_points(
    shape_logp, color_logp, shapes, colors, mask, seen
  ).metrics()
