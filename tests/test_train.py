"""The model, the freezing masks and the train step in every parallel mode."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from scfail import model as model_lib
from scfail import train as train_lib
from tests.conftest import tiny_config


def _model(**kw):
  args = dict(
    num_shapes=8,
    num_colors=8,
    width=32,
    depth=2,
    num_heads=2,
    mlp_ratio=2,
    stem_features=(8, 16),
  )
  args.update(kw)
  return model_lib.Hybrid(**args)


def test_parameter_count_by_hand():
  stem = (3 * 3 * 3 * 8 + 8) + (3 * 3 * 8 * 16 + 16)
  embedding = 16 * 32 + 32
  pos = 64 * 32  # 32 px downsampled twice: an 8x8 grid.
  norm = 2 * 32
  attention = norm + (32 * 96 + 96) + (32 * 32 + 32)
  mlp = norm + (32 * 64 + 64) + (64 * 32 + 32)
  heads = 2 * (32 * 8 + 8)
  with_attention = stem + embedding + pos + 2 * (attention + mlp) + norm
  with_attention += heads
  params = train_lib.init_params(_model(), 0, 32)
  assert train_lib.count_params(params) == with_attention == 21664
  params = train_lib.init_params(_model(use_attention=False), 0, 32)
  assert train_lib.count_params(params) == with_attention - 2 * attention


def test_no_attention_parameters_without_attention():
  params = train_lib.init_params(_model(use_attention=False), 0, 32)
  paths = train_lib.param_paths(params)
  assert not [p for p in paths if 'attention' in p]
  assert 'block_1/mlp/hidden/kernel' in paths


def test_patchify_stem_and_class_token():
  m = _model(stem='patchify', patch_size=4, pooling='cls')
  params = train_lib.init_params(m, 0, 32)
  assert params['stem']['patchify']['kernel'].shape == (4, 4, 3, 16)
  assert params['cls_token'].shape == (1, 1, 32)
  out = m.apply({'params': params}, jnp.zeros((2, 32, 32, 3), jnp.uint8))
  assert out['shape'].shape == (2, 8) and out['color'].shape == (2, 8)


def test_flop_count_matches_xla_for_the_matmuls():
  m = _model()
  params = train_lib.init_params(m, 0, 32)
  images = jnp.zeros((4, 32, 32, 3), jnp.uint8)
  fwd = jax.jit(lambda p, x: m.apply({'params': p}, x))
  cost = fwd.lower(params, images).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  counted = 4 * model_lib.forward_flops(m, 32)
  # XLA also counts norms, activations and softmax: a few percent more.
  assert counted <= cost['flops'] <= 1.15 * counted


def _setup(config, batch_size=16):
  model = train_lib.build_model(config, 8, 8)
  params = train_lib.init_params(model, config.seed, 32)
  labels = train_lib.freeze_labels(params, config.freeze)
  optimizer = train_lib.make_optimizer(config, labels)
  step_fn = functools.partial(
    train_lib.train_step,
    seed=config.seed,
    **train_lib.step_arguments(config, model, optimizer, labels),
  )
  # On the host, so that every donated copy on devices is a fresh one.
  state = jax.device_get(train_lib.create_train_state(params, optimizer))
  rng = np.random.default_rng(0)
  batches = [
    {
      'image': rng.integers(0, 256, (batch_size, 32, 32, 3), np.uint8),
      'shape': rng.integers(0, 8, batch_size).astype(np.int32),
      'color': rng.integers(0, 8, batch_size).astype(np.int32),
    }
    for _ in range(3)
  ]
  return model, params, labels, optimizer, step_fn, state, batches


def _run_jit(step_fn, state, batches, devices):
  mesh = Mesh(np.asarray(devices), ('data',))
  step = train_lib.jit_train_step(step_fn, mesh)
  state = jax.device_put(state, NamedSharding(mesh, P()))
  for batch in batches:
    batch = jax.device_put(batch, NamedSharding(mesh, P('data')))
    state, metrics = step(state, batch)
  return jax.device_get(state.params), jax.device_get(metrics)


def test_jit_pmap_and_single_device_agree_on_8_devices():
  assert jax.device_count() == 8
  config = tiny_config('unused', **{'model.depth': 2})
  *_, step_fn, state, batches = _setup(config)
  single, m1 = _run_jit(step_fn, state, batches, jax.devices()[:1])
  sharded, m8 = _run_jit(step_fn, state, batches, jax.devices())

  pstep = train_lib.pmap_train_step(step_fn)
  pstate = train_lib.replicate_for_pmap(state)
  for batch in batches:
    batch = {k: v.reshape((8, -1) + v.shape[1:]) for k, v in batch.items()}
    pstate, pm = pstep(pstate, batch)
  pmapped = jax.tree.map(lambda x: np.asarray(x[0]), pstate.params)

  # Adam divides by the gradient's magnitude, so entries whose gradient is
  # almost zero can differ by a fraction of one step's size (lr = 2e-3).
  for other in (sharded, pmapped):
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4),
      single,
      other,
    )
  assert m1['loss'] == pytest.approx(float(m8['loss']), rel=1e-5)
  assert m1['loss'] == pytest.approx(float(pm['loss'][0]), rel=1e-5)
  # The parameters did move.
  assert not np.allclose(
    single['shape_head']['kernel'], state.params['shape_head']['kernel']
  )


def test_step_is_traced_once_over_ten_steps():
  config = tiny_config('unused')
  *_, step_fn, state, batches = _setup(config)
  traces = []

  def counted(state, batch):
    traces.append(1)
    return step_fn(state, batch)

  mesh = Mesh(np.asarray(jax.devices()), ('data',))
  step = train_lib.jit_train_step(counted, mesh)
  state = jax.device_put(state, NamedSharding(mesh, P()))
  for i in range(10):
    batch = jax.device_put(batches[i % 3], NamedSharding(mesh, P('data')))
    state, _ = step(state, batch)
  assert len(traces) == 1
  assert int(state.step) == 10


FROZEN = ('stem/.*', 'embedding/.*', 'pos_embedding')


def test_frozen_parameters_stay_bit_identical_and_hold_no_state():
  config = tiny_config('unused', freeze=FROZEN)
  _, params, labels, optimizer, step_fn, state, batches = _setup(config)
  before = jax.device_get(params)
  after, _ = _run_jit(step_fn, state, batches, jax.devices())
  flat_labels = dict(
    zip(train_lib.param_paths(params), jax.tree.leaves(labels), strict=True)
  )
  flat_before = dict(
    zip(train_lib.param_paths(params), jax.tree.leaves(before), strict=True)
  )
  flat_after = dict(
    zip(train_lib.param_paths(after), jax.tree.leaves(after), strict=True)
  )
  frozen = [p for p, label in flat_labels.items() if label == 'frozen']
  assert sorted(frozen) == [
    'embedding/bias',
    'embedding/kernel',
    'pos_embedding',
    'stem/conv_0/bias',
    'stem/conv_0/kernel',
    'stem/conv_1/bias',
    'stem/conv_1/kernel',
  ]
  for path, value in flat_before.items():
    same = np.asarray(value).tobytes() == np.asarray(flat_after[path]).tobytes()
    assert same == (path in frozen), path

  # AdamW keeps two moments per trainable parameter and none for frozen ones.
  unfrozen_config = tiny_config('unused')
  _, _, _, _, _, unfrozen_state, _ = _setup(unfrozen_config)
  frozen_size = sum(np.size(flat_before[p]) for p in frozen)
  assert (
    train_lib.state_size(unfrozen_state.opt_state)
    - train_lib.state_size(state.opt_state)
    == 2 * frozen_size
  )


def test_frozen_stem_has_no_backward_pass():
  def ops(freeze, layer):
    """Compiled ops of `layer`: (forward, backward), by their op names."""
    config = tiny_config('unused', freeze=freeze)
    *_, step_fn, state, batches = _setup(config)
    hlo = jax.jit(step_fn).lower(state, batches[0]).compile().as_text()
    names = [n for n in re.findall(r'op_name="([^"]*)"', hlo) if layer in n]
    backward = [n for n in names if '/transpose(jvp(' in n]
    return len(names) - len(backward), len(backward)

  for layer in ('/stem/', '/embedding/'):
    frozen_forward, frozen_backward = ops(FROZEN, layer)
    forward, backward = ops((), layer)
    # The layer still runs forward; only training it needs its backward.
    assert frozen_forward > 0 and forward > 0
    assert frozen_backward == 0
    assert backward > 0


def test_freeze_errors_name_the_pattern_and_list_paths():
  params = train_lib.init_params(_model(), 0, 32)
  with pytest.raises(
    ValueError,
    match=r"'stme/\.\*' matches no parameter.*"
    r'stem/conv_0/kernel',
  ):
    train_lib.freeze_labels(params, ('stme/.*',))
  with pytest.raises(ValueError, match=r"'\(' is not a valid regular"):
    train_lib.freeze_labels(params, ('(',))


def test_bfloat16_path_keeps_float32_parameters():
  config = tiny_config('unused', **{'model.dtype': 'bfloat16'})
  *_, step_fn, state, batches = _setup(config)
  after, metrics = _run_jit(step_fn, state, batches, jax.devices())
  dtypes = {str(x.dtype) for x in jax.tree.leaves(after)}
  assert dtypes == {'float32'}
  assert np.isfinite(metrics['loss'])


@pytest.mark.parametrize('size', [32, 16, 9])
def test_strided_conv_is_a_convolution_on_every_backend(size):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, size, size, 5), np.float32))
  kernel = jnp.asarray(rng.standard_normal((3, 3, 5, 7), np.float32))

  def conv(x, kernel):
    return jax.lax.conv_general_dilated(
      x, kernel, (2, 2), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )

  want = conv(x, kernel)
  got = model_lib.strided_conv_as_product(x, kernel)
  assert got.shape == want.shape == (2, -(-size // 2), -(-size // 2), 7)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  loss = lambda f: jax.grad(lambda x, k: (f(x, k) ** 2).sum(), (0, 1))
  for g, w in zip(
    loss(model_lib.strided_conv_as_product)(x, kernel),
    loss(conv)(x, kernel),
    strict=True,
  ):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_strided_conv_has_the_parameters_and_outputs_of_flax_conv():
  import flax.linen as nn

  x = jnp.asarray(
    np.random.default_rng(1).standard_normal((2, 8, 8, 3), np.float32)
  )
  ours = model_lib.StridedConv(6)
  theirs = nn.Conv(6, (3, 3), strides=(2, 2), padding='SAME')
  key = jax.random.key(3)
  p_ours, p_theirs = ours.init(key, x), theirs.init(key, x)
  # Same names, shapes and initial values: checkpoints carry over.
  assert jax.tree.structure(p_ours) == jax.tree.structure(p_theirs)
  leaves = zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_theirs), strict=True)
  for a, b in leaves:
    np.testing.assert_array_equal(a, b)
  p = jax.tree.map(lambda a: a + 0.1, p_theirs)
  np.testing.assert_allclose(
    ours.apply(p, x), theirs.apply(p, x), rtol=1e-5, atol=1e-5
  )
