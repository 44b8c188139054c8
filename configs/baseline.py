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
    config_lib.apply_full_preset(config)
  return config
