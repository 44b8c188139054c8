"""The study's metrics on small tables worked out by hand."""

import numpy as np
import pytest

from scfail import evaluate


def test_accuracy_ignores_padding():
  logp = np.log([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
  labels = np.array([0, 0, 0, 1])
  assert evaluate.accuracy(logp, labels, np.ones(4)) == 0.75
  # The last two are padding: one right, one wrong of the first two.
  assert evaluate.accuracy(logp, labels, np.array([1, 1, 0, 0])) == 0.5


def test_confusion_matrix():
  logp = np.log([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
  labels = np.array([0, 0, 1, 1])
  got = evaluate.confusion_matrix(logp, labels, np.array([1, 1, 1, 0]))
  np.testing.assert_array_equal(got, [[1, 1], [1, 0]])


def test_shape_bias_by_hand():
  # 4 shapes, 4 colors, diagnostic color of shape s is color s.
  shapes = np.array([0, 0, 1, 2, 3])
  colors = np.array([1, 2, 0, 3, 0])  # Each the color of another shape.
  predicted = np.array([0, 2, 0, 1, 3])
  # Follows shape: examples 0 and 4. Follows color: 1 (color 2 -> shape 2)
  # and 2 (color 0 -> shape 0). Example 3 predicts 1: neither.
  logp = np.log(np.eye(4)[predicted] * 0.9 + 0.025)
  got = evaluate.shape_bias(logp, shapes, colors, np.ones(5), num_colors=4)
  assert got['shape_bias'] == pytest.approx(2 / 4)
  assert got['neither'] == pytest.approx(1 / 5)


def test_czsl_metrics_by_hand():
  # Two shapes, two colors; pair (0, 1) is unseen.
  seen = np.array([[True, False], [True, True]])
  shape_p = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
  color_p = np.array([[0.8, 0.2], [0.3, 0.7], [0.5, 0.5], [0.1, 0.9]])
  shapes, colors = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
  # Pair scores (products of probabilities), example by example:
  #   ex 0, true (0,0) seen:   .72 .18 | .08 .02 -> seen best (0,0) right;
  #          switches to unseen (0,1) past log(.72/.18) = log 4.
  #   ex 1, true (0,1) unseen: .18 .42 | .12 .28 -> seen best (1,1) wrong;
  #          switches to (0,1), right, past log(.28/.42).
  #   ex 2, true (1,0) seen:   .10 .10 | .40 .40 -> (1,0) right (first of a
  #          tie); switches past log(.40/.10) = log 4.
  #   ex 3, true (1,1) seen:   .03 .27 | .07 .63 -> right; switches past
  #          log(.63/.27).
  # Operating points (seen acc, unseen acc) as the bias grows:
  #   (1, 0), then (1, 1), then (2/3, 1), then (0, 1).
  got = evaluate.czsl_metrics(
    np.log(shape_p), np.log(color_p), shapes, colors, np.ones(4), seen
  )
  assert got['best_seen'] == 1.0
  assert got['best_unseen'] == 1.0
  assert got['best_hm'] == 1.0
  expected_bias = (np.log(0.28 / 0.42) + np.log(0.63 / 0.27)) / 2
  assert got['best_hm_bias'] == pytest.approx(expected_bias)
  # Area under seen accuracy over unseen accuracy: one step from 0 to 1
  # at seen accuracy 1.
  assert got['auc'] == pytest.approx(1.0)

  # Make ex 1's unseen pair lose to a seen one at every bias: the unseen
  # accuracy can never rise, and neither can the harmonic mean.
  worse = shape_p.copy()
  worse[1] = [0.05, 0.95]
  got = evaluate.czsl_metrics(
    np.log(worse), np.log(color_p), shapes, colors, np.ones(4), seen
  )
  # ex 1 now scores (0,1) at .035 and (1,1) at .665: past the bias
  # log(.665/.035) it picks (0,1), but by then every seen example has
  # switched too (their switch points are lower), so seen acc is 0 there.
  assert got['best_unseen'] == 1.0
  assert got['best_hm'] == 0.0
  assert got['auc'] == 0.0
