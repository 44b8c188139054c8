"""Shared fixtures: 8 fake CPU devices and one tiny real TFDS build."""

import os

# Must happen before JAX initialises its backends.
os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # noqa: E402


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory) -> str:
  """A TFDS data directory holding a real build of scfail_shapes/tiny."""
  from scfail import data

  path = str(tmp_path_factory.mktemp('tensorflow_datasets'))
  data.get_builder('scfail_shapes/tiny', path)
  return path


def tiny_config(tfds_dir: str, **overrides):
  """A single-run config small enough to train in seconds."""
  from scfail import config_lib

  c = config_lib.base_config()
  c.dataset = 'scfail_shapes/tiny'
  c.data_dir = tfds_dir
  c.batch_size = 16
  c.eval_batch_size = 64
  c.total_steps = 6
  c.warmup_steps = 2
  c.log_every = 2
  c.eval_every = 3
  c.checkpoint_every = 3
  c.eval_max_examples = 64
  c.model.width = 32
  c.model.depth = 1
  c.model.num_heads = 2
  c.model.mlp_ratio = 2
  c.model.stem_features = (8, 16)
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c
