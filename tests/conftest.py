"""Shared fixtures: 8 fake CPU devices and one tiny real TFDS build."""

import importlib.util
import os

# Must happen before JAX initialises its backends.
os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory) -> str:
  """A TFDS data directory holding a real build of scfail_shapes/tiny."""
  from scfail import data

  path = str(tmp_path_factory.mktemp('tensorflow_datasets'))
  data.get_builder('scfail_shapes/tiny', path)
  return path


def load_config_module(name: str):
  """The module of configs/<name>.py."""
  spec = importlib.util.spec_from_file_location(
    f'configs_{name}', os.path.join(ROOT, 'configs', f'{name}.py')
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny_config(tfds_dir: str, **overrides):
  """configs/tiny.py reading `tfds_dir`, with dotted-key `overrides`."""
  c = load_config_module('tiny').get_config()
  c.data_dir = tfds_dir
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c
