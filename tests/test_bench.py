"""The bench's suites on tiny settings, and the PyTorch peer's parity.

No test asserts a speed: the machines are shared and noisy. They check
that every figure is there, has the right sign and agrees with XLA.
"""

import functools
import json
import sys

import jax
import numpy as np
import pytest

import scfail
from scfail import bench
from scfail import model as model_lib
from scfail import train as train_lib
from tests.conftest import tiny_config

TINY = {
  'width': 32,
  'depth': 1,
  'num_heads': 2,
  'mlp_ratio': 2,
  'stem_features': (8, 16),
}
TINY_FULL = {**TINY, 'stem_features': (8, 16, 16)}
HAS_TORCH = bench.load_torch_peer()[0] is not None


def _settings(**kw) -> bench.Settings:
  args = dict(
    batch_size=16,
    full_batch_size=8,
    model_overrides={'default': TINY, 'full': TINY_FULL},
    rounds=2,
    min_time=0.01,
    matmul_sizes=(64, 128),
    torch_compile=False,
    render_images=64,
  )
  args.update(kw)
  return bench.Settings(**args)


def _roundtrip(result, tmp_path):
  path = tmp_path / 'out' / 'bench.json'
  bench.write_json(result, str(path))
  return json.loads(path.read_text())


def test_step_suite_reports_every_figure(tmp_path):
  # The full model's step is the default's code with other sizes; its
  # config and batch are checked below, apart, to keep this test fast.
  result = _roundtrip(
    bench.step_suite(_settings(models=('default',))), tmp_path
  )

  assert result['suite'] == 'step'
  assert result['machine']['device_count'] == jax.device_count()
  assert {'python', 'jax', 'flax'} <= set(result['versions'])
  assert result['matmul']['peak_flops_per_s'] > 0
  assert result['matmul']['peak_size'] in (64, 128)

  variants = result['variants']
  scfail = [
    'scfail/default',
    'scfail/default/frozen_embeddings',
    'scfail/default/no_attention',
  ]
  for key in scfail:
    v = variants[key]
    assert v['images_per_s'] > 0
    assert v['images_per_s_per_device'] == pytest.approx(
      v['images_per_s'] / jax.device_count()
    )
    assert v['compile_s'] > 0
    assert v['achieved_flops_per_s'] > 0
    assert 0 < v['fraction_of_matmul_peak']
    # XLA also counts norms, activations, softmax and the optimizer.
    assert 0.8 < v['xla_over_counted_flops'] < 1.2, key
    assert v['xla_memory_per_device']['temp_bytes'] > 0
    assert len(v['seconds']) == 2
  assert (
    variants['scfail/default/frozen_embeddings']['counted_flops_per_step']
    < variants['scfail/default']['counted_flops_per_step']
  )
  assert result['memory_peak']['bytes'] > 0

  ratios = result['ratios']
  assert set(result['ratios_best']) == set(ratios)
  assert len(result['load_average']['start']) == 3
  assert ratios['default/frozen_embeddings_over_baseline_step_time'] > 0
  assert ratios['default/no_attention_over_baseline_step_time'] > 0
  assert ratios['default/fraction_of_matmul_peak'] > 0
  assert result['models']['default']['batch'] == 16
  if HAS_TORCH:
    assert ratios['default/scfail_over_torch_eager'] > 0
    assert ratios['default/no_attention/scfail_over_torch_eager'] > 0
    assert variants['torch_eager/default']['threads'] >= 1
    p = result['models']['default']['parity']
    assert p['params_scfail'] == p['params_torch']
    assert p['forward_flops_scfail'] == p['forward_flops_torch']
    assert p['max_logit_gap'] < 1e-4
  else:
    assert any('PyTorch peer skipped' in n for n in result['notes'])
  assert bench.format_step(result)


def test_full_model_is_the_accelerator_preset_with_a_cpu_batch():
  config = bench.model_config('full', bench.Settings())
  assert (config.image_size, config.model.width, config.model.depth) == (
    64,
    384,
    8,
  )
  assert config.model.dtype == 'bfloat16'
  batch, why = bench.batch_size('full', config, bench.Settings())
  assert jax.default_backend() == 'cpu'  # As everywhere in these tests.
  assert batch == bench.CPU_FULL_BATCH
  assert 'preset batch 512' in why
  small = bench.model_config('full', _settings())
  assert small.model.width == TINY_FULL['width']
  assert bench.batch_size('full', small, _settings())[0] == 8


def test_data_suite_reports_every_figure(tfds_dir, tmp_path):
  # The session's build of scfail_shapes/tiny, so the build is not repeated.
  settings = _settings(data_dir=tfds_dir)
  result = _roundtrip(bench.data_suite(settings), tmp_path)

  assert result['suite'] == 'data'
  assert result['render']['images'] == 64
  assert result['render']['images_per_s'] > 0
  # tiny: 1,024 train, 256 validation, 512 test and 5 x 256 shifted.
  assert result['tfds_build']['images'] == 3072
  assert result['tfds_build']['images_per_s'] > 0
  assert not result['tfds_build']['from_scratch']
  assert result['tfds_read']['images'] == 1024
  assert result['tfds_read']['images_per_s'] > 0
  for key in ('pipeline', 'step', 'fed_step'):
    assert result['variants'][key]['images_per_s'] > 0
    assert result['variants'][key]['batch'] == 16
  assert result['ratios']['pipeline_over_step'] > 0
  assert result['ratios']['fed_step_over_step'] > 0
  assert bench.format_data(result)


def test_frozen_training_flops_skip_the_embedding_backward():
  model = train_lib.build_model(tiny_config('unused'), 8, 8)
  full = bench.training_flops(model, 32, frozen_embeddings=False)
  frozen = bench.training_flops(model, 32, frozen_embeddings=True)
  assert full == 3 * model_lib.forward_flops(model, 32)
  # Stem (3x3 convolutions to 16x16x8 and 8x8x16) and embedding (16 to 32
  # on 64 tokens), forward only: two passes fewer.
  stem_and_embedding = 2 * (
    16 * 16 * 27 * 8 + 8 * 8 * 9 * 8 * 16 + 64 * 16 * 32
  )
  assert full - frozen == 2 * stem_and_embedding


def test_reference_model_is_the_same_model_from_another_file():
  model = train_lib.build_model(tiny_config('unused'), 8, 8)
  twin = bench.reference_hybrid(model_lib.__file__, model)
  assert type(twin) is not type(model)
  params = train_lib.init_params(model, 0, 32)
  images = np.zeros((2, 32, 32, 3), np.uint8)
  ours = model.apply({'params': params}, images)
  theirs = twin.apply({'params': params}, images)
  np.testing.assert_array_equal(ours['shape'], theirs['shape'])


def test_missing_torch_says_how_to_install_it(monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)
  monkeypatch.delitem(sys.modules, 'scfail.torch_peer', raising=False)
  monkeypatch.delattr(scfail, 'torch_peer', raising=False)
  peer, why = bench.load_torch_peer()
  assert peer is None
  assert "pip install -e '.[bench]'" in why and '--notorch' in why


def test_ratios_are_medians_of_rounds_or_of_the_best_rounds():
  a = bench.Variant('a', lambda n: None, images=10, seconds=[1.0, 2.0, 4.0])
  b = bench.Variant('b', lambda n: None, images=20, seconds=[4.0, 2.0, 2.0])
  assert bench.time_ratio(a, b) == 1.0  # Median of 1/4, 1 and 2.
  assert bench.rate_ratio(a, b) == 0.5  # Median of 2, 1/2 and 1/4.
  assert bench.time_ratio(a, b, best=True) == 0.5
  assert bench.rate_ratio(a, b, best=True) == 1.0
  assert a.images_per_s == 5.0


@pytest.mark.skipif(not HAS_TORCH, reason='PyTorch is not installed.')
@pytest.mark.parametrize(
  'overrides',
  [
    {},
    {'use_attention': False},
    {'stem': 'patchify', 'patch_size': 4, 'pooling': 'cls'},
  ],
)
def test_torch_peer_has_the_same_parameters_flops_and_logits(overrides):
  import torch

  from scfail import torch_peer

  config = tiny_config('unused')
  config.model.update(overrides)
  model = train_lib.build_model(config, 8, 8)
  params = train_lib.init_params(model, 0, 32)
  module = torch_peer.Hybrid(model, 32)
  assert torch_peer.count_params(module) == train_lib.count_params(params)
  assert torch_peer.forward_flops(module, 32) == model_lib.forward_flops(
    model, 32
  )

  torch_peer.load_flax_params(module, params)
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8)
  ours = model.apply({'params': params}, images)
  module.eval()
  with torch.no_grad():
    theirs = module(torch.from_numpy(images))
  for head in ('shape', 'color'):
    np.testing.assert_allclose(
      ours[head], theirs[head].numpy(), rtol=1e-4, atol=1e-5
    )


@pytest.mark.skipif(not HAS_TORCH, reason='PyTorch is not installed.')
def test_torch_peer_trains_like_scfail():
  import torch

  from scfail import torch_peer

  config = tiny_config('unused', learning_rate=1e-2, warmup_steps=1)
  model = train_lib.build_model(config, 8, 8)
  params = train_lib.init_params(model, 0, 32)
  labels = train_lib.freeze_labels(params, ())
  optimizer = train_lib.make_optimizer(config, labels)
  step = jax.jit(
    functools.partial(
      train_lib.train_step,
      seed=config.seed,
      **train_lib.step_arguments(config, model, optimizer, labels),
    )
  )
  state = train_lib.create_train_state(params, optimizer)
  module = torch_peer.Hybrid(model, 32)
  torch_peer.load_flax_params(module, params)
  torch_step = torch_peer.make_train_step(module, config)

  batch = bench.random_batch(16, 32)
  torch_batch = {
    k: torch.from_numpy(v if k == 'image' else v.astype(np.int64))
    for k, v in batch.items()
  }
  for _ in range(4):
    state, ours = step(state, batch)
    theirs = torch_step(torch_batch)
    for key in ('loss', 'shape_acc', 'grad_norm', 'param_norm'):
      np.testing.assert_allclose(
        float(ours[key]), float(theirs[key]), rtol=2e-3, err_msg=key
      )


def test_seeds_suite_reports_a_ratio():
  settings = bench.Settings(
    batch_size=16,
    rounds=1,
    min_time=0.0,
    model_overrides={'default': {'width': 32, 'depth': 1, 'num_heads': 2}},
  )
  result = bench.seeds_suite(settings, num_seeds=2)
  ratio = result['ratios']['vmapped / in turn, images/s']
  assert ratio > 0
  assert set(result['variants']) == {'2 seeds vmapped', '2 seeds in turn'}
  assert 'images/s' in bench.format_seeds(result)


def test_run_suite_reads_rates_and_input_wait_from_a_real_run(tfds_dir):
  settings = _settings(
    run_steps=12,
    data_dir=tfds_dir,
    run_overrides={'dataset': 'scfail_shapes/tiny', 'eval_max_examples': 32},
  )
  result = bench.run_suite(settings)
  run = result['run']

  assert run['steps'] == 12 and run['log_every'] == 1 and run['batch'] == 16
  # Twelve logged intervals; the first, which compiles, is left out.
  assert run['intervals'] == 11
  assert run['images_per_s'] > 0
  assert run['images_per_s_per_device'] == pytest.approx(
    run['images_per_s'] / jax.device_count()
  )
  assert 0 <= run['input_wait_fraction'] <= run['input_wait_fraction_max'] < 1
  assert run['run_s'] > 0 and run['dataset_s'] >= 0
  assert set(run['final']) == {'eval/iid/shape_acc', 'eval/iid/color_acc'}
  assert result['memory_peak']['bytes'] > 0
  assert 'images/s per device' in bench.format_run(result)
