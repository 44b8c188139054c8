"""Figures of scfail.visualize: panels, mistake marks, files, CZSL points."""

import json
import os

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from scfail import benchmarks, evaluate, experiment, render, visualize
from tests.conftest import tiny_config

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
SHAPE_NAMES = ('circle', 'square', 'triangle')
COLOR_NAMES = ('red', 'green', 'blue')


def framed(ax) -> bool:
  """Whether an image's axes carries the red mistake frame."""
  spine = ax.spines['top']
  return spine.get_visible() and spine.get_edgecolor() == to_rgba(
    visualize.MISTAKE_COLOR
  )


def images(n: int) -> np.ndarray:
  return np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3), np.uint8)


def test_mistake_mask_compares_only_given_predictions():
  shapes, colors = np.array([0, 1, 2, 0]), np.array([0, 1, 2, 2])
  ps, pc = np.array([0, 2, 2, 0]), np.array([1, 1, 2, 2])
  np.testing.assert_array_equal(
    visualize.mistake_mask(shapes, colors, ps, pc), [True, True, False, False]
  )
  np.testing.assert_array_equal(
    visualize.mistake_mask(shapes, colors, ps, None),
    [False, True, False, False],
  )
  np.testing.assert_array_equal(
    visualize.mistake_mask(shapes, colors, None, pc),
    [True, False, False, False],
  )
  assert not visualize.mistake_mask(shapes, colors).any()


@pytest.mark.parametrize('n', [1, 7, 8, 11])
def test_grid_has_one_panel_per_image_in_order(n):
  shapes = np.arange(n) % 3
  colors = (np.arange(n) + 1) % 3
  fig = visualize.sample_grid(
    images(n), shapes, colors, SHAPE_NAMES, COLOR_NAMES, columns=4
  )
  assert len(fig.axes) == n
  titles = [ax.get_title() for ax in fig.axes]
  assert titles == [
    f'{SHAPE_NAMES[s]}\n{COLOR_NAMES[c]}'
    for s, c in zip(shapes, colors, strict=True)
  ]
  assert not any(framed(ax) for ax in fig.axes)
  # Rows are drawn top to bottom, left to right.
  positions = [ax.get_position() for ax in fig.axes]
  if n > 4:
    assert positions[4].y0 < positions[0].y0
    assert positions[1].x0 > positions[0].x0


def test_grid_marks_exactly_the_mistakes():
  shapes, colors = np.array([0, 1, 2, 0, 1]), np.array([0, 1, 2, 2, 0])
  ps, pc = np.array([0, 2, 2, 0, 1]), np.array([0, 1, 0, 2, 0])
  fig = visualize.sample_grid(
    images(5), shapes, colors, SHAPE_NAMES, COLOR_NAMES, ps, pc
  )
  assert [framed(ax) for ax in fig.axes] == [False, True, True, False, False]
  answers = [ax.get_xlabel() for ax in fig.axes]
  assert answers == ['', 'said triangle', 'said red', '', '']
  assert '2 of 5 wrong' in fig._suptitle.get_text()


def test_grid_does_not_score_a_missing_head():
  # As on grayscale: the color is not scored, so a wrong color is no
  # mistake.
  shapes, colors = np.array([0, 1]), np.array([0, 1])
  fig = visualize.sample_grid(
    images(2),
    shapes,
    colors,
    SHAPE_NAMES,
    COLOR_NAMES,
    predicted_shapes=np.array([1, 1]),
    predicted_colors=None,
  )
  assert [framed(ax) for ax in fig.axes] == [True, False]
  assert fig.axes[0].get_xlabel() == 'said square'


def test_grid_refuses_mismatched_lengths():
  with pytest.raises(ValueError, match='predicted_shapes has 2 entries'):
    visualize.sample_grid(
      images(3),
      np.zeros(3, int),
      np.zeros(3, int),
      SHAPE_NAMES,
      COLOR_NAMES,
      predicted_shapes=np.zeros(2, int),
    )


def test_benchmark_examples_are_those_evaluation_scores(tfds_dir):
  from scfail import data

  builder = data.get_builder('scfail_shapes/tiny', tfds_dir)
  spec = data.dataset_spec(builder)
  split = data.load_study_split(builder, spec, 'test')
  seen = benchmarks.holdout(8, 8, 2)
  for name in ('iid', 'unseen_pairs', 'cue_conflict'):
    b = benchmarks.BENCHMARKS[name]
    examples = visualize.benchmark_examples(b, split, seen, max_examples=40)
    keep = benchmarks.pair_filter(b, seen)
    expected = np.nonzero(keep[split['shape'], split['color']])[0][:40]
    np.testing.assert_array_equal(examples['shape'], split['shape'][expected])
    np.testing.assert_array_equal(examples['image'], split['image'][expected])


def test_benchmark_grids_write_one_png_per_benchmark(tfds_dir, tmp_path):
  calls = []

  def predict(batch):
    calls.append(len(batch))
    return np.zeros(len(batch), int), np.zeros(len(batch), int)

  paths = visualize.benchmark_grids(
    tfds_dir,
    'scfail_shapes/tiny',
    out_dir=str(tmp_path),
    per_benchmark=5,
    predict_fn=predict,
  )
  assert list(paths) == list(benchmarks.BENCHMARKS)
  for name, path in paths.items():
    assert path == os.path.join(str(tmp_path), f'samples_{name}.png')
    with open(path, 'rb') as f:
      assert f.read(8) == PNG_SIGNATURE
  assert calls == [5] * len(benchmarks.BENCHMARKS)
  assert sorted(os.listdir(tmp_path)) == sorted(
    f'samples_{name}.png' for name in benchmarks.BENCHMARKS
  )


def test_mistakes_only_needs_a_predict_fn(tfds_dir, tmp_path):
  with pytest.raises(ValueError, match='predict_fn'):
    visualize.benchmark_grids(
      tfds_dir, out_dir=str(tmp_path), mistakes_only=True
    )


def random_outputs(seed, n=60, num_shapes=4, num_colors=4, ties=False):
  rng = np.random.default_rng(seed)
  shape_logits = rng.normal(size=(n, num_shapes)) * 2
  color_logits = rng.normal(size=(n, num_colors)) * 2
  if ties:  # Coarse logits: many examples share switch points.
    shape_logits, color_logits = shape_logits.round(), color_logits.round()

  def log_softmax(x):
    return x - np.log(np.exp(x).sum(-1, keepdims=True))

  return (
    log_softmax(shape_logits),
    log_softmax(color_logits),
    rng.integers(0, num_shapes, n),
    rng.integers(0, num_colors, n),
    (rng.random(n) < 0.9).astype(np.float32),
  )


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('ties', [False, True])
def test_czsl_points_agree_with_the_metrics(seed, ties):
  seen = benchmarks.holdout(4, 4, 1)
  outputs = random_outputs(seed, ties=ties)
  curve = visualize.czsl_operating_points(*outputs, seen)
  expected = evaluate.czsl_metrics(*outputs, seen)
  got = curve.metrics()
  assert got.keys() == expected.keys()
  for key in got:
    assert got[key] == pytest.approx(expected[key], abs=1e-12), key
  # The intervals tile the line in order; seen accuracy only falls and
  # unseen accuracy only grows with the bias.
  np.testing.assert_array_equal(curve.bias_low[1:], curve.bias_high[:-1])
  assert (np.diff(curve.bias_low) > 0).all()
  assert (np.diff(curve.seen_acc) <= 1e-12).all()
  assert (np.diff(curve.unseen_acc) >= -1e-12).all()


def test_czsl_points_by_hand():
  # The worked example of tests/test_evaluate.py: operating points (seen,
  # unseen) are (1, 0), (1, 1), (2/3, 1), then (0, 1) once examples 0 and 2
  # have switched, both near log 4 (in floating point, one just before the
  # other: one more point, (1/3, 1)).
  seen = np.array([[True, False], [True, True]])
  shape_p = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
  color_p = np.array([[0.8, 0.2], [0.3, 0.7], [0.5, 0.5], [0.1, 0.9]])
  curve = visualize.czsl_operating_points(
    np.log(shape_p),
    np.log(color_p),
    np.array([0, 0, 1, 1]),
    np.array([0, 1, 0, 1]),
    np.ones(4),
    seen,
  )
  np.testing.assert_allclose(curve.seen_acc[:3], [1, 1, 2 / 3])
  np.testing.assert_allclose(curve.unseen_acc[:3], [0, 1, 1])
  assert (curve.seen_acc[-1], curve.unseen_acc[-1]) == (0, 1)
  np.testing.assert_allclose(
    curve.bias_high[:3],
    [np.log(0.28 / 0.42), np.log(0.63 / 0.27), np.log(4)],
  )
  assert curve.at_bias(0.0) == 1  # log(.28/.42) < 0 < log(.63/.27).
  assert curve.best == 1


def test_czsl_figure_draws_one_or_several_runs():
  seen = benchmarks.holdout(4, 4, 1)
  a = visualize.czsl_operating_points(*random_outputs(0), seen)
  b = visualize.czsl_operating_points(*random_outputs(1), seen)
  assert len(visualize.czsl_curve_figure(a).axes) == 2
  fig = visualize.czsl_curve_figure({'baseline': a, 'ablation': b})
  labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
  assert labels == [
    f'baseline: AUC {a.metrics()["auc"]:.3f}',
    f'ablation: AUC {b.metrics()["auc"]:.3f}',
  ]


def write_metrics(run_dir, lines, tail=''):
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(line) + '\n' for line in lines)
    f.write(tail)


def test_learning_curves_read_a_file_being_written(tmp_path):
  run = str(tmp_path / 'a')
  write_metrics(
    run,
    [
      {'step': 2, 'train/loss': 2.0},
      {'step': 4, 'train/loss': 1.5},
      {'step': 4, 'eval/iid/shape_acc': 0.5, 'eval/texture/shape_acc': 0.2},
    ],
    tail='{"step": 6, "train/lo',  # A line cut short by the writer.
  )
  fig = visualize.learning_curves(
    run, ['train/loss', 'eval/*/shape_acc', 'eval/czsl/auc']
  )
  loss, shape, czsl = fig.axes
  np.testing.assert_array_equal(loss.lines[0].get_xdata(), [2, 4])
  # Benchmarks in the study's order, labelled by what the * stands for.
  assert [line.get_label() for line in shape.lines] == ['iid', 'texture']
  assert not czsl.lines
  assert czsl.texts[0].get_text() == 'nothing logged yet'


def test_learning_curves_of_several_runs(tmp_path):
  runs = {}
  for name, loss in (('baseline', 1.0), ('ablation', 2.0)):
    runs[name] = str(tmp_path / name)
    write_metrics(runs[name], [{'step': 1, 'train/loss': loss}])
  missing = str(tmp_path / 'not_started')
  fig = visualize.learning_curves({**runs, 'not_started': missing})
  assert len(fig.axes) == len(visualize.DEFAULT_CURVES)
  assert [line.get_label() for line in fig.axes[0].lines] == [
    'baseline',
    'ablation',
  ]


def test_comparison_table():
  table = visualize.comparison_table(
    {
      'baseline': {'eval/iid/shape_acc': 0.5, 'eval/iid/color_acc': 1.0},
      'ablation': {'eval/iid/shape_acc': 0.25},
    },
    names=['iid', 'texture'],
  )
  assert table.splitlines() == [
    '| metric | baseline | ablation |',
    '|---|---|---|',
    '| iid shape accuracy | 0.500 | 0.250 |',
    '| iid color accuracy | 1.000 | - |',
  ]


@pytest.fixture(scope='module')
def finished_run(tfds_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('visualize_run'))
  summary = experiment.run(tiny_config(tfds_dir), workdir)
  return workdir, summary


def test_a_run_predicts_as_its_evaluation_scored(finished_run, tmp_path):
  run_dir, summary = finished_run
  restored = visualize.restore_run(run_dir)
  assert restored.step == 6
  # The CZSL metrics of the restored checkpoint are those the run logged.
  curve = visualize.czsl_points_from_run(run_dir)
  for key, value in curve.metrics().items():
    assert value == pytest.approx(summary[f'eval/czsl/{key}'], abs=1e-6), key

  from scfail import data

  builder = data.get_builder('scfail_shapes/tiny', restored.config.data_dir)
  split = data.load_study_split(builder, restored.spec, 'test')
  examples = visualize.benchmark_examples(
    benchmarks.BENCHMARKS['iid'],
    split,
    benchmarks.holdout(8, 8, 2),
    restored.config.eval_max_examples,
  )
  shapes, colors = visualize.predict_fn_from_run(run_dir)(examples['image'])
  assert np.mean(shapes == examples['shape']) == pytest.approx(
    summary['eval/iid/shape_acc'], abs=1e-6
  )
  assert np.mean(colors == examples['color']) == pytest.approx(
    summary['eval/iid/color_acc'], abs=1e-6
  )

  paths = visualize.mistake_grids(run_dir, str(tmp_path), per_benchmark=4)
  assert list(paths) == list(restored.config.benchmarks)
  assert all(os.path.exists(p) for p in paths.values())


def test_confusion_figure_of_a_run(finished_run):
  run_dir, summary = finished_run
  fig = visualize.confusion_figure(os.path.join(run_dir, 'summary.json'))
  shape_ax, color_ax = fig.axes
  assert [t.get_text() for t in shape_ax.get_yticklabels()] == list(
    render.SHAPES
  )
  total = np.sum(summary['confusion/shape'])
  accuracy = np.trace(summary['confusion/shape']) / total
  assert shape_ax.get_title() == (
    f'shape: accuracy {accuracy:.3f} on {total} images'
  )


def test_restore_run_explains_a_missing_run(tmp_path):
  with pytest.raises(FileNotFoundError, match='config.json'):
    visualize.restore_run(str(tmp_path))
