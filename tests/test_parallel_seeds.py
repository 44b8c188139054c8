"""K seeds in one vmapped step write what K separate runs write."""

import json
import os
import shutil

import numpy as np

from scfail import experiment
from scfail import train as train_lib
from tests.conftest import tiny_config


def _lines(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _files(workdir):
  return sorted(
    os.path.relpath(os.path.join(root, name), workdir)
    for root, _, files in os.walk(workdir)
    for name in files
    if '/tb' not in root
    and not root.endswith('tb')
    and 'checkpoints' not in root
  )


def test_parallel_seeds_match_separate_runs_and_resume(tfds_dir, tmp_path):
  together = str(tmp_path / 'together')
  summaries = experiment.run(
    tiny_config(tfds_dir, num_parallel_seeds=2), together
  )
  assert sorted(summaries) == ['seed_0', 'seed_1']
  losses = []
  for seed in (0, 1):
    alone_dir = str(tmp_path / f'alone_{seed}')
    alone = experiment.run(tiny_config(tfds_dir, seed=seed), alone_dir)
    lane_dir = os.path.join(together, f'seed_{seed}')
    lane = summaries[f'seed_{seed}']
    assert _files(lane_dir) == _files(alone_dir)
    assert sorted(os.listdir(os.path.join(lane_dir, 'checkpoints'))) == [
      '3',
      '6',
    ]
    np.testing.assert_allclose(lane['train/loss'], alone['train/loss'], 1e-5)
    for key, value in alone.items():
      if key.endswith('_acc'):
        assert abs(lane[key] - value) <= 2 / 64, key
    assert [r['step'] for r in _lines(lane_dir)] == [
      r['step'] for r in _lines(alone_dir)
    ]
    a = train_lib.load_run_params(lane_dir)
    b = train_lib.load_run_params(alone_dir)
    for path in a:
      np.testing.assert_allclose(a[path], b[path], rtol=1e-3, atol=1e-4)
    with open(os.path.join(lane_dir, 'config.json')) as f:
      assert json.load(f)['seed'] == seed
    losses.append(lane['train/loss'])
  assert losses[0] != losses[1]  # Each seed has its own data and init.

  # Resume both seeds from the middle: the same numbers, exactly.
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(together, resumed)
  for seed in (0, 1):
    lane_dir = os.path.join(resumed, f'seed_{seed}')
    shutil.rmtree(os.path.join(lane_dir, 'checkpoints', '6'))
    os.remove(os.path.join(lane_dir, 'summary.json'))
  again = experiment.run(tiny_config(tfds_dir, num_parallel_seeds=2), resumed)
  for seed in (0, 1):
    for key, value in summaries[f'seed_{seed}'].items():
      if key.startswith(('eval/', 'train/loss', 'confusion/')):
        assert again[f'seed_{seed}'][key] == value, key


def test_a_sweep_trains_seeds_k_at_a_time(tfds_dir, tmp_path):
  config = tiny_config(
    tfds_dir, total_steps=2, eval_every=2, num_parallel_seeds=2
  )
  config.seeds = (0, 1, 2)
  config.variants = {'baseline': {}}
  results = experiment.run_sweep(config, str(tmp_path))
  assert sorted(results['baseline']) == [0, 1, 2]
  for seed in (0, 1, 2):
    path = os.path.join(tmp_path, 'baseline', f'seed_{seed}', 'summary.json')
    assert os.path.exists(path)
