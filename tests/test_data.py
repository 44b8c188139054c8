"""The dataset, the pair hold-out, the training mixture and evaluation sets."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from scfail import benchmarks, data, input_pipeline, render


def test_builder_is_registered_and_splits_hold_every_pair(tfds_dir):
  ds = tfds.load('scfail_shapes/tiny', split='test', data_dir=tfds_dir)
  builder = tfds.builder('scfail_shapes/tiny', data_dir=tfds_dir)
  assert set(builder.info.splits) == {
    'train',
    'validation',
    'test',
    *data.SHIFT_SPLITS,
  }
  pairs = {(int(ex['shape']), int(ex['color'])) for ex in tfds.as_numpy(ds)}
  assert len(pairs) == 64


def test_generation_is_a_pure_function_of_the_seed():
  def images(seed):
    return np.concatenate(
      [im for _, _, im in data.generate_split('train', 600, 32, seed)]
    )

  assert images(0).tobytes() == images(0).tobytes()
  assert images(0).tobytes() != images(1).tobytes()


def test_shift_splits_differ_in_the_factor_they_shift(tfds_dir):
  builder = data.get_builder('scfail_shapes/tiny', tfds_dir)
  keys = ('texture', 'brightness', 'scale', 'clutter', 'grayscale')
  test = data.load_split(builder, 'test', keys)
  assert (test['texture'] == 0).all() and not test['clutter'].any()
  lo, hi = render.TRAIN_SCALE_RANGE
  assert ((test['scale'] >= lo) & (test['scale'] <= hi)).all()
  texture = data.load_split(builder, 'test_texture', keys)
  assert (texture['texture'] > 0).all()
  lighting = data.load_split(builder, 'test_lighting', keys)
  assert (np.abs(lighting['brightness'] - 1.0) > 0.25).all()
  scale = data.load_split(builder, 'test_scale', keys)
  assert ((scale['scale'] < lo) | (scale['scale'] > hi)).all()
  assert data.load_split(builder, 'test_background', keys)['clutter'].all()
  assert data.load_split(builder, 'test_grayscale', keys)['grayscale'].all()


def test_holdout_gives_each_shape_and_color_two_unseen_partners():
  seen = benchmarks.holdout(8, 8, 2)
  assert (~seen).sum() == 16
  assert ((~seen).sum(0) == 2).all() and ((~seen).sum(1) == 2).all()
  diag = benchmarks.diagnostic_colors(8, 8)
  assert seen[np.arange(8), diag].all()
  with pytest.raises(ValueError, match='unseen_pairs_per_attribute=4'):
    benchmarks.holdout(8, 8, 4)


def test_mixture_probabilities():
  seen = benchmarks.holdout(8, 8, 2)
  probs = benchmarks.Mixture(seen, 0.8).pair_probabilities()
  assert probs.sum() == pytest.approx(1.0)
  assert (probs[~seen] == 0).all()
  # Diagnostic pair: 0.8 plus a 0.2 share of its 6 seen partners, per shape.
  assert probs[0, 0] == pytest.approx((0.8 + 0.2 / 6) / 8)
  assert probs[0, 1] == pytest.approx((0.2 / 6) / 8)


def _source(n=512, seed=0):
  rng = np.random.default_rng(seed)
  pairs = rng.permutation(np.arange(n) % 64)
  return input_pipeline.TrainSource(
    images=np.arange(n, dtype=np.int64)[:, None],
    shapes=pairs // 8,
    colors=pairs % 8,
    num_shapes=8,
    num_colors=8,
  )


def test_no_unseen_pair_reaches_a_training_batch_and_rho_holds():
  source = _source()
  seen = benchmarks.holdout(8, 8, 2)
  probs = benchmarks.Mixture(seen, 0.8).pair_probabilities()
  stream = input_pipeline.train_batches(source, probs, 3, 64, 0)
  shapes, colors = [], []
  for _ in range(60):
    _, batch = next(stream)
    shapes.append(batch['shape'])
    colors.append(batch['color'])
  shapes, colors = np.concatenate(shapes), np.concatenate(colors)
  assert seen[shapes, colors].all()
  diagonal = (colors == benchmarks.diagnostic_colors(8, 8)[shapes]).mean()
  assert diagonal == pytest.approx(0.8 + 0.2 / 6, abs=0.03)


def test_training_order_is_a_function_of_seed_and_step():
  source = _source()
  probs = benchmarks.Mixture(benchmarks.holdout(8, 8, 2), 0.0)
  probs = probs.pair_probabilities()
  first = input_pipeline.train_batches(source, probs, 7, 32, 0)
  batches = [next(first)[1]['image'] for _ in range(8)]
  resumed = input_pipeline.train_batches(source, probs, 7, 32, 5)
  step, batch = next(resumed)
  assert step == 5
  np.testing.assert_array_equal(batch['image'], batches[5])
  other = input_pipeline.train_batches(source, probs, 8, 32, 5)
  assert not np.array_equal(next(other)[1]['image'], batches[5])


@pytest.mark.parametrize('processes', [1, 2, 3])
@pytest.mark.parametrize('batch', [8, 48])
def test_evaluation_counts_every_example_once(processes, batch):
  n = 203
  split = {
    'image': np.arange(n)[:, None],
    'shape': np.arange(n) % 8,
    'color': (np.arange(n) // 8) % 8,
  }
  seen = benchmarks.holdout(8, 8, 2)
  bench = benchmarks.BENCHMARKS['iid']
  expected = np.nonzero(seen[split['shape'], split['color']])[0]
  counted, num_batches = [], set()
  for p in range(processes):
    es = input_pipeline.eval_set(
      bench, split, seen, batch * processes, p, processes
    )
    num_batches.add(len(es.batches))
    for b in es.batches:
      counted.extend(b['image'][b['mask'] > 0, 0].tolist())
  assert len(num_batches) == 1  # Every process runs as many batches.
  assert sorted(counted) == expected.tolist()


def test_missing_real_dataset_names_the_flag_and_directory(tmp_path):
  with pytest.raises(ValueError, match=r'--config.dataset=.*shapes3d.*'):
    data.get_builder('shapes3d', str(tmp_path))


class ScfailShapesBuilderTest(tfds.testing.DatasetBuilderTestCase):
  """TFDS's own builder harness, on the tiny config."""

  DATASET_CLASS = data.ScfailShapes
  BUILDER_CONFIG_NAMES_TO_TEST = ['tiny']
  SKIP_CHECKSUMS = True
  SPLITS = {
    'train': 1024,
    'validation': 256,
    'test': 512,
    **{name: 256 for name in data.SHIFT_SPLITS},
  }

  @classmethod
  def setUpClass(cls):
    # Nothing is downloaded, so there is no dummy data to point at.
    cls.EXAMPLE_DIR = os.path.dirname(__file__)
    super().setUpClass()


def test_shapes3d_goes_through_the_same_layer(tmp_path):
  from scfail import experiment
  from tests.conftest import tiny_config

  config = tiny_config(
    str(tmp_path),
    dataset='shapes3d',
    image_size=64,
    unseen_pairs_per_attribute=1,
    benchmarks=('iid', 'unseen_pairs', 'cue_conflict'),
    total_steps=2,
    eval_every=2,
    eval_batch_size=32,
  )
  with tfds.testing.mock_data(num_examples=320):
    builder = data.get_builder('shapes3d', str(tmp_path))
    spec = data.dataset_spec(builder)
    assert (spec.num_shapes, spec.num_colors) == (4, 10)
    split = data.load_study_split(builder, spec, 'test')
    assert split['image'].shape[1:] == (64, 64, 3)
    assert split['shape'].max() < 4 and split['color'].max() < 10
    summary = experiment.run(config, str(tmp_path / 'run'))
  assert 'eval/unseen_pairs/shape_acc' in summary
  assert 'eval/czsl/auc' in summary

  config.benchmarks = ('iid', 'texture')
  with tfds.testing.mock_data(num_examples=320):
    with pytest.raises(ValueError, match=r"holds \['texture'\], whose split"):
      experiment.run(config, str(tmp_path / 'run2'))


def test_evaluation_is_exact_on_1_2_and_8_devices(tfds_dir):
  import jax
  from jax.sharding import Mesh

  from scfail import experiment
  from scfail import train as train_lib
  from tests.conftest import tiny_config

  config = tiny_config(tfds_dir, eval_batch_size=48, eval_max_examples=0)
  builder = data.get_builder(config.dataset, tfds_dir)
  spec = data.dataset_spec(builder)
  seen = benchmarks.holdout(8, 8, 2)
  model = train_lib.build_model(config, 8, 8)
  params = train_lib.init_params(model, 0, 32)
  results = []
  for n in (1, 2, 8):
    mesh = Mesh(np.asarray(jax.devices()[:n]), ('data',))
    evaluator = experiment.Evaluator(config, builder, spec, seen, model, mesh)
    results.append(evaluator(params))
    counts = [es.num_examples for es in evaluator.sets]
    # The tiny test split: 512 examples, 8 of each of the 64 pairs.
    assert counts[:2] == [48 * 8, 16 * 8]  # iid, unseen_pairs
  # One example more or less moves an accuracy by 1/512 or more; the
  # calibration bias is a gap between logits, which the device count may
  # change in its last bits (products of other shapes per device).
  assert results[0].keys() == results[1].keys() == results[2].keys()
  for other in results[1:]:
    assert other == pytest.approx(results[0], rel=1e-5, abs=1e-6)


def test_cue_conflict_pairs_are_seen_and_off_their_diagnostic_color():
  seen = benchmarks.holdout(8, 8, 2)
  keep = benchmarks.pair_filter(benchmarks.BENCHMARKS['cue_conflict'], seen)
  # 64 pairs, minus 8 diagnostic ones, minus 16 unseen ones.
  assert keep.sum() == 40
  assert not keep[np.arange(8), benchmarks.diagnostic_colors(8, 8)].any()
  assert (seen[keep]).all()
  shapes, colors = np.nonzero(keep)
  other = benchmarks.conflict_shape(colors, 8, 8)
  assert (other >= 0).all() and (other != shapes).all()
