r"""A smoke test: a tiny model on the tiny dataset, for a few steps.

Command:

  python -m scfail.main --config=configs/tiny.py

Used by the tests and notebooks to exercise every part of a run in seconds;
its accuracies mean nothing. Timed on: a 2-core AMD EPYC VM, no
accelerator, jax 0.10.2 (2026-12-03): about 30 s, most of it start-up,
dataset build and compilation.
"""

import ml_collections

from scfail import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config_lib.parse_arg(arg, ('cpu',))
  c = config_lib.base_config()
  c.dataset = 'scfail_shapes/tiny'
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
  return c
