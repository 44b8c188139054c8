"""Checks of a run's config before anything expensive starts.

Every check raises `ConfigError` with one line naming the field, its value
and what is allowed, so that a typo costs seconds, not a compile.
"""

from __future__ import annotations

import os
import re

import jax
import ml_collections

from scfail import benchmarks, model


class ConfigError(ValueError):
  """A config value that cannot work; the message says which and why."""


PARALLELISMS = ('jit', 'pmap')
DTYPES = ('float32', 'bfloat16')
DATASETS = ('scfail_shapes', 'shapes3d')


def _positive_int(config, field: str) -> None:
  value = _get(config, field)
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ConfigError(f'config.{field}={value!r} must be a positive integer.')


def _get(config, field: str):
  node = config
  for part in field.split('.'):
    node = node[part]
  return node


def _choice(config, field: str, allowed) -> None:
  value = _get(config, field)
  if value not in allowed:
    raise ConfigError(
      f'config.{field}={value!r} is not one of {", ".join(map(str, allowed))}.'
    )


def total_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
  """The run's length in steps, from steps, epochs or examples.

  Exactly one of `total_steps`, `total_epochs` and `total_examples` may be
  positive; epochs count passes over `num_train` examples.
  """
  given = {
    k: config.get(k, 0)
    for k in ('total_steps', 'total_epochs', 'total_examples')
    if config.get(k, 0)
  }
  if len(given) != 1:
    raise ConfigError(
      'Give the run length as exactly one of config.total_steps, '
      f'config.total_epochs or config.total_examples; got {given or "none"}.'
    )
  ((key, value),) = given.items()
  if value <= 0:
    raise ConfigError(f'config.{key}={value!r} must be positive.')
  if key == 'total_steps':
    return int(value)
  examples = value * num_train if key == 'total_epochs' else value
  return max(1, int(round(examples / config.batch_size)))


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every field of a single run's config; raises `ConfigError`."""
  for field in (
    'batch_size',
    'eval_batch_size',
    'image_size',
    'eval_every',
    'log_every',
    'checkpoint_every',
    'keep_checkpoints',
    'model.width',
    'model.depth',
    'model.num_heads',
    'model.mlp_ratio',
    'model.patch_size',
    'num_parallel_seeds',
  ):
    _positive_int(config, field)
  if isinstance(config.seed, bool) or not isinstance(config.seed, int):
    raise ConfigError(f'config.seed={config.seed!r} must be an integer.')
  for field in ('learning_rate',):
    if not _get(config, field) > 0:
      raise ConfigError(
        f'config.{field}={_get(config, field)!r} must be positive.'
      )
  for field in (
    'weight_decay',
    'grad_clip',
    'warmup_steps',
    'unseen_pairs_per_attribute',
  ):
    if _get(config, field) < 0:
      raise ConfigError(
        f'config.{field}={_get(config, field)!r} must not be negative.'
      )
  if not 0.0 <= config.correlation <= 1.0:
    raise ConfigError(
      f'config.correlation={config.correlation!r} must be in [0, 1].'
    )
  if not 0.0 <= config.model.dropout < 1.0:
    raise ConfigError(
      f'config.model.dropout={config.model.dropout!r} must be in [0, 1).'
    )
  for head in ('shape', 'color'):
    if config.loss_weights[head] < 0:
      raise ConfigError(
        f'config.loss_weights.{head}={config.loss_weights[head]!r} must not '
        'be negative.'
      )
  _choice(config, 'parallelism', PARALLELISMS)
  _choice(config, 'model.dtype', DTYPES)
  _choice(config, 'model.stem', model.STEMS)
  _choice(config, 'model.pooling', model.POOLINGS)
  if config.dataset.split('/')[0] not in DATASETS:
    raise ConfigError(
      f'config.dataset={config.dataset!r} is not a known dataset; use '
      "'scfail_shapes/<32px|64px|tiny>' or 'shapes3d'."
    )
  unknown = [b for b in config.benchmarks if b not in benchmarks.BENCHMARKS]
  if unknown or not config.benchmarks:
    raise ConfigError(
      f'config.benchmarks={tuple(config.benchmarks)!r}: unknown '
      f'{unknown or "(empty)"}; choose from '
      f'{", ".join(benchmarks.BENCHMARKS)}.'
    )
  for pattern in config.freeze:
    try:
      re.compile(pattern)
    except re.error as e:
      raise ConfigError(
        f'config.freeze pattern {pattern!r} is not a valid regular '
        f'expression ({e}).'
      ) from None
  for pattern in config.init_from_patterns:
    try:
      re.compile(pattern)
    except re.error as e:
      raise ConfigError(
        f'config.init_from_patterns entry {pattern!r} is not a valid '
        f'regular expression ({e}).'
      ) from None
  if config.init_from and not os.path.isdir(config.init_from):
    raise ConfigError(
      f'config.init_from={config.init_from!r} is not a directory; give the '
      'directory of a finished or checkpointed run.'
    )
  if config.model.width % config.model.num_heads:
    raise ConfigError(
      f'config.model.width={config.model.width} is not divisible by '
      f'config.model.num_heads={config.model.num_heads}.'
    )
  if config.model.stem == 'conv' and not config.model.stem_features:
    raise ConfigError('config.model.stem_features must not be empty.')
  if any(f <= 0 for f in config.model.stem_features):
    raise ConfigError(
      f'config.model.stem_features={tuple(config.model.stem_features)!r} '
      'must hold positive channel counts.'
    )
  factor = (
    config.model.patch_size
    if config.model.stem == 'patchify'
    else 2 ** len(config.model.stem_features)
  )
  if config.image_size % factor:
    field = (
      'config.model.patch_size'
      if config.model.stem == 'patchify'
      else 'len(config.model.stem_features)'
    )
    raise ConfigError(
      f'config.image_size={config.image_size} is not divisible by the '
      f"stem's downsampling {factor} ({field}); pick sizes that divide."
    )
  devices = jax.device_count()
  if config.batch_size % devices:
    raise ConfigError(
      f'config.batch_size={config.batch_size} is not divisible by the '
      f'{devices} devices; use a multiple of {devices}.'
    )
  if config.eval_batch_size % devices:
    raise ConfigError(
      f'config.eval_batch_size={config.eval_batch_size} is not divisible by '
      f'the {devices} devices; use a multiple of {devices}.'
    )
  shards = config.input_shards or jax.process_count()
  if config.input_shards < 0 or shards % jax.process_count():
    raise ConfigError(
      f'config.input_shards={config.input_shards} must be 0 or a multiple '
      f'of the {jax.process_count()} processes.'
    )
  if config.batch_size % shards or config.batch_size % jax.process_count():
    raise ConfigError(
      f'config.batch_size={config.batch_size} is not divisible by the '
      f'{shards} input shards; use a multiple of {shards}.'
    )
  if config.parallelism == 'pmap' and jax.process_count() > 1:
    raise ConfigError(
      "config.parallelism='pmap' runs on one process only; use 'jit' on "
      'several hosts.'
    )
  if config.num_parallel_seeds > 1 and config.parallelism != 'jit':
    raise ConfigError(
      f'config.num_parallel_seeds={config.num_parallel_seeds} needs '
      f"config.parallelism='jit', not {config.parallelism!r}."
    )


def parse_arg(arg: str | None, allowed: tuple[str, ...]) -> str:
  """The preset named by a config argument, checked strictly."""
  preset = arg or allowed[0]
  if preset not in allowed:
    raise ValueError(
      f'Unknown config argument {arg!r}; use one of {", ".join(allowed)} '
      '(as in --config=configs/ablate.py:full).'
    )
  return preset


def base_config() -> ml_collections.ConfigDict:
  """A complete single-run config with CPU-sized defaults."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = 'scfail_shapes/32px'
  c.data_dir = ''  # TFDS data directory; '' means TFDS's default.
  c.image_size = 32

  # Run length: exactly one of these three is non-zero.
  c.total_steps = 1000
  c.total_epochs = 0.0
  c.total_examples = 0

  c.batch_size = 128  # Global, over every device of every process.
  c.eval_batch_size = 512
  c.learning_rate = 2e-3
  c.warmup_steps = 100
  c.weight_decay = 0.05
  c.grad_clip = 1.0
  c.loss_weights = ml_collections.ConfigDict({'shape': 1.0, 'color': 1.0})

  # The study: which pairs training sees and how shape and color co-occur.
  c.unseen_pairs_per_attribute = 2
  c.correlation = 0.0
  c.benchmarks = (
    'iid',
    'unseen_pairs',
    'texture',
    'lighting',
    'scale',
    'background',
    'grayscale',
    'cue_conflict',
  )
  c.eval_max_examples = 0  # Per benchmark; 0 means all.

  c.model = ml_collections.ConfigDict()
  c.model.width = 96
  c.model.depth = 3
  c.model.num_heads = 4
  c.model.mlp_ratio = 2
  c.model.stem = 'conv'
  c.model.stem_features = (24, 48)
  c.model.patch_size = 4
  c.model.use_attention = True
  c.model.pooling = 'mean'
  c.model.dropout = 0.0
  c.model.dtype = 'float32'

  c.freeze = ()
  c.init_from = ''  # A run directory whose parameters start this run.
  c.init_from_patterns = ('.*',)  # Which of its parameters to take.
  c.parallelism = 'jit'
  c.num_parallel_seeds = 1
  # The training stream is cut into this many shards (0: one per process);
  # each process reads its own. Runs with equal input_shards see the same
  # global batches, whatever their number of processes.
  c.input_shards = 0

  c.log_every = 50
  c.eval_every = 250
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  return c


def apply_full_preset(c: ml_collections.ConfigDict) -> None:
  """Turns `c` into the accelerator-sized study: 64 px, a larger model."""
  c.dataset = 'scfail_shapes/64px'
  c.image_size = 64
  c.batch_size = 512
  c.eval_batch_size = 1024
  c.total_steps = 20_000
  c.warmup_steps = 1_000
  c.learning_rate = 1e-3
  c.eval_every = 2_000
  c.checkpoint_every = 2_000
  c.log_every = 100
  c.eval_max_examples = 0
  c.model.width = 384
  c.model.depth = 8
  c.model.num_heads = 6
  c.model.mlp_ratio = 4
  c.model.stem_features = (64, 128, 256)
  c.model.dtype = 'bfloat16'
