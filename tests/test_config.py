"""Every bad config value gets its own one-line message before any work."""

import importlib.util
import os

import pytest

from scfail import config_lib
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BAD = [
  ({'batch_size': 0}, r'config.batch_size=0 must be a positive integer'),
  ({'batch_size': 12}, r'config.batch_size=12 is not divisible by the 8 dev'),
  ({'eval_every': -5}, r'config.eval_every=-5 must be a positive integer'),
  ({'learning_rate': 0.0}, r'config.learning_rate=0.0 must be positive'),
  ({'correlation': 1.5}, r'config.correlation=1.5 must be in \[0, 1\]'),
  ({'parallelism': 'pjit'}, r"config.parallelism='pjit' is not one of jit"),
  ({'model.dtype': 'float16'}, r"config.model.dtype='float16' is not one"),
  ({'model.stem': 'vit'}, r"config.model.stem='vit' is not one of conv"),
  ({'model.num_heads': 3}, r'width=32 is not divisible by config.model.num'),
  ({'dataset': 'mnist'}, r"config.dataset='mnist' is not a known dataset"),
  ({'benchmarks': ('iid', 'fog')}, r"unknown \['fog'\]; choose from iid"),
  ({'freeze': ('(',)}, r"config.freeze pattern '\(' is not a valid regular"),
  ({'image_size': 30}, r'config.image_size=30 is not divisible by the stem'),
  ({'model.dropout': 1.0}, r'config.model.dropout=1.0 must be in \[0, 1\)'),
  ({'weight_decay': -1.0}, r'config.weight_decay=-1.0 must not be negative'),
  (
    {'unseen_pairs_per_attribute': -1},
    r'config.unseen_pairs_per_attribute=-1 must not be negative',
  ),
  ({'keep_checkpoints': 0}, r'config.keep_checkpoints=0 must be a positive'),
]


@pytest.mark.parametrize('overrides, message', BAD)
def test_bad_value_is_named(overrides, message):
  config = tiny_config('unused', **overrides)
  with pytest.raises(config_lib.ConfigError, match=message) as e:
    config_lib.validate(config)
  assert '\n' not in str(e.value)


def test_messages_are_all_different():
  messages = set()
  for overrides, _ in BAD:
    try:
      config_lib.validate(tiny_config('unused', **overrides))
    except config_lib.ConfigError as e:
      messages.add(str(e))
  assert len(messages) == len(BAD)


def test_run_length_in_steps_epochs_or_examples():
  config = tiny_config('unused', total_steps=0, total_epochs=2.0)
  assert config_lib.total_steps(config, num_train=800) == 100
  config = tiny_config('unused', total_steps=0, total_examples=1600)
  assert config_lib.total_steps(config, num_train=800) == 100
  config = tiny_config('unused', total_epochs=2.0)
  with pytest.raises(config_lib.ConfigError, match='exactly one of'):
    config_lib.total_steps(config, num_train=800)


def _load(name):
  spec = importlib.util.spec_from_file_location(
    name, os.path.join(ROOT, 'configs', f'{name}.py')
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize('name', ['baseline', 'ablate'])
def test_shipped_configs_are_valid(name):
  module = _load(name)
  for arg in (None, 'full'):
    config = module.get_config(arg)
    if 'variants' in config:
      from scfail import experiment

      for variant, overrides in config.variants.items():
        run = experiment.variant_config(config, dict(overrides), 0)
        config_lib.validate(run)
        assert variant
    else:
      config_lib.validate(config)
  with pytest.raises(ValueError, match="Unknown config argument 'fulll'"):
    module.get_config('fulll')
