r"""The baseline: one hybrid, one seed, shape and color, no ablation.

Command:

  python -m scfail.main --config=configs/baseline.py

Presets: the default is CPU-sized; `:full` is accelerator-sized
(`--config=configs/baseline.py:full`).

Timed on: a 2-core AMD EPYC VM, no accelerator, jax 0.10.2 (2026-12-03).
Runtime: RUNTIME_PLACEHOLDER
Reached: RESULTS_PLACEHOLDER
"""

import ml_collections

from scfail import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = config_lib.parse_arg(arg, ('cpu', 'full'))
  config = config_lib.base_config()
  if preset == 'full':
    config.dataset = 'scfail_shapes/64px'
    config.image_size = 64
    config.batch_size = 512
    config.total_steps = 20_000
    config.warmup_steps = 1_000
    config.learning_rate = 1e-3
    config.eval_every = 2_000
    config.checkpoint_every = 2_000
    config.log_every = 100
    config.model.width = 384
    config.model.depth = 8
    config.model.num_heads = 6
    config.model.mlp_ratio = 4
    config.model.stem_features = (64, 128, 256)
    config.model.dtype = 'bfloat16'
  return config
