"""The study's metrics, computed on the host from per-example outputs.

All functions take NumPy arrays of log-probabilities (`shape_logp`
[n, num_shapes], `color_logp` [n, num_colors]), integer labels and a mask
that is 1 for real examples and 0 for padding, so that results are exact
whatever the number of devices.
"""

from __future__ import annotations

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


def czsl_metrics(
  shape_logp: np.ndarray,
  color_logp: np.ndarray,
  shapes: np.ndarray,
  colors: np.ndarray,
  mask: np.ndarray,
  seen: np.ndarray,
) -> dict[str, float]:
  """Closed-world compositional zero-shot metrics over a calibration bias.

  Each of the num_shapes * num_colors pairs scores log p(shape) + log
  p(color); a bias b is added to unseen pairs and the top pair is the
  decision. As b grows, each example's decision switches once, from its
  best seen pair to its best unseen pair, at b = best seen score - best
  unseen score. Sweeping b over every such switch point gives every
  distinct (seen accuracy, unseen accuracy) operating point.

  Returns:
    `best_seen`, `best_unseen`, `best_hm` (harmonic mean), `best_hm_bias`
    and `auc`, the area under unseen accuracy against seen accuracy.
  """
  keep = mask > 0
  if not keep.any():
    raise ValueError('czsl_metrics needs at least one real example.')
  shape_logp, color_logp = shape_logp[keep], color_logp[keep]
  shapes, colors = shapes[keep], colors[keep]
  scores = shape_logp[:, :, None] + color_logp[:, None, :]
  n = scores.shape[0]
  scores = scores.reshape(n, -1)
  seen_flat = seen.reshape(-1)
  true_pair = shapes * seen.shape[1] + colors
  true_seen = seen_flat[true_pair]

  seen_scores = np.where(seen_flat, scores, -np.inf)
  unseen_scores = np.where(~seen_flat, scores, -np.inf)
  best_seen_pair = seen_scores.argmax(-1)
  best_unseen_pair = unseen_scores.argmax(-1)
  switch = seen_scores.max(-1) - unseen_scores.max(-1)
  correct_if_seen = best_seen_pair == true_pair
  correct_if_unseen = best_unseen_pair == true_pair

  # Operating points: below every switch point, then past each distinct one.
  order = np.argsort(switch, kind='stable')
  switch = switch[order]
  cs, cu = correct_if_seen[order], correct_if_unseen[order]
  ts = true_seen[order]
  gain = cu.astype(np.int64) - cs.astype(np.int64)
  seen_hits = np.concatenate([[0], np.cumsum(gain * ts)]) + (cs & ts).sum()
  unseen_hits = np.concatenate([[0], np.cumsum(gain * ~ts)]) + (cs & ~ts).sum()
  distinct = np.concatenate([[True], switch[1:] != switch[:-1], [True]])
  points = np.nonzero(distinct)[0]  # k examples switched, k in points.
  n_seen, n_unseen = max(ts.sum(), 1), max((~ts).sum(), 1)
  seen_acc = seen_hits[points] / n_seen
  unseen_acc = unseen_hits[points] / n_unseen
  # A bias inside each operating point's interval of biases.
  edges = np.concatenate([[switch[0] - 1.0], switch, [switch[-1] + 1.0]])
  bias = (edges[points] + edges[points + 1]) / 2
  hm = np.where(
    seen_acc + unseen_acc > 0,
    2 * seen_acc * unseen_acc / np.maximum(seen_acc + unseen_acc, 1e-12),
    0.0,
  )
  best = int(hm.argmax())
  return {
    'best_seen': float(seen_acc.max()),
    'best_unseen': float(unseen_acc.max()),
    'best_hm': float(hm[best]),
    'best_hm_bias': float(bias[best]),
    # Unseen accuracy only grows with the bias, seen accuracy only falls.
    'auc': float(np.trapezoid(seen_acc, unseen_acc)),
  }
