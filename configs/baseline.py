r"""The baseline: one hybrid, one seed, shape and color, no ablation.

Command:

  python -m scfail.main --config=configs/baseline.py

Presets: the default is CPU-sized; `:full` is accelerator-sized
(`--config=configs/baseline.py:full`).

Timed on: a 2-core VM (Intel Xeon, AVX-512), no accelerator, jax 0.10.2,
at commit 7a36a53 (2026-12-03).
Runtime: 4 min 26 s with the dataset already built (building
scfail_shapes/32px the first time adds about 40 s); 1,000 steps of 128
images at about 610 images/s, input wait under 1% of the time.
Reached (final, held-out test images): iid shape accuracy 0.805 and color
accuracy 1.000 (chance 0.125); unseen pairs shape 0.087, color 0.997;
texture shape 0.240, color 0.966; lighting shape 0.375, color 0.607; scale
shape 0.296, color 0.872; background shape 0.340, color 0.852; grayscale
shape 0.242; cue-conflict shape bias 0.947; CZSL AUC 0.673, best harmonic
mean 0.688.
On a slower 2-core VM (AMD EPYC, AVX2; commit f17aada): `make run` from a
fresh clone (dataset already built) took 7 min 23 s at 250-480 images/s
(the VM was shared), input wait 0.5% of the time, and reached iid shape
accuracy 0.809 and color accuracy 0.999.
The `:full` preset has not been timed yet: no accelerator was available.
"""

import ml_collections

from scfail import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = config_lib.parse_arg(arg, ('cpu', 'full'))
  config = config_lib.base_config()
  if preset == 'full':
    config_lib.apply_full_preset(config)
  return config
