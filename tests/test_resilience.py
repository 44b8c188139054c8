"""Runs survive SIGKILL, SIGTERM, damaged checkpoints and NaNs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import pytest

from scfail import config_lib, experiment
from scfail import train as train_lib
from tests.conftest import ROOT, tiny_config

SLOW = {'total_steps': 12, 'checkpoint_every': 2, 'eval_every': 6}


def _command(tfds_dir: str, workdir: str) -> list[str]:
  return [
    sys.executable,
    '-m',
    'scfail.main',
    '--config=configs/tiny.py',
    f'--workdir={workdir}',
    f'--config.data_dir={tfds_dir}',
    '--config.total_steps=12',
    '--config.checkpoint_every=2',
    '--config.eval_every=6',
  ]


def _wait_for(predicate, process, timeout=240.0):
  start = time.time()
  while not predicate():
    if process.poll() is not None:
      raise AssertionError(f'the run exited early: {process.returncode}')
    if time.time() - start > timeout:
      process.kill()
      raise AssertionError('timed out waiting for the run')
    time.sleep(0.05)


def _steps(workdir: str) -> list[int]:
  path = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(path):
    return []
  return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def _summary(workdir: str) -> dict:
  with open(os.path.join(workdir, 'summary.json')) as f:
    return json.load(f)


def _comparable(summary: dict) -> dict:
  return {
    k: v
    for k, v in summary.items()
    if k.startswith(('eval/', 'confusion/'))
    or k in ('train/loss', 'train/param_norm', 'train/grad_norm')
  }


@pytest.fixture(scope='module')
def uninterrupted(tfds_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  return workdir, experiment.run(tiny_config(tfds_dir, **SLOW), workdir)


def test_sigkill_then_restart_ends_with_the_same_numbers(
  tfds_dir, tmp_path, uninterrupted
):
  workdir = str(tmp_path / 'killed')
  process = subprocess.Popen(
    _command(tfds_dir, workdir), cwd=ROOT, stderr=subprocess.DEVNULL
  )
  _wait_for(lambda: 4 in _steps(workdir), process)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not os.path.exists(os.path.join(workdir, 'summary.json'))
  assert max(_steps(workdir)) < 12

  again = experiment.run(tiny_config(tfds_dir, **SLOW), workdir)
  assert _comparable(again) == _comparable(uninterrupted[1])
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    steps = [json.loads(line)['step'] for line in f]
  with open(os.path.join(uninterrupted[0], 'metrics.jsonl')) as f:
    expected = [json.loads(line)['step'] for line in f]
  assert steps == expected


def test_sigterm_saves_the_current_step_and_exits_cleanly(tfds_dir, tmp_path):
  workdir = str(tmp_path / 'preempted')
  process = subprocess.Popen(
    _command(tfds_dir, workdir),
    cwd=ROOT,
    stderr=subprocess.PIPE,
    text=True,
  )
  _wait_for(lambda: 2 in _steps(workdir), process)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr[-2000:]
  line = [x for x in stderr.splitlines() if 'SIGTERM: saved' in x]
  assert line, stderr[-2000:]
  saved = int(line[0].split('at step ')[1].split(' ')[0])
  assert max(_steps(workdir)) == saved
  assert not os.path.exists(os.path.join(workdir, 'summary.json'))


def test_a_damaged_newest_checkpoint_is_skipped(
  tfds_dir, tmp_path, uninterrupted
):
  workdir = str(tmp_path / 'damaged')
  shutil.copytree(uninterrupted[0], workdir)
  os.remove(os.path.join(workdir, 'summary.json'))
  newest = max(_steps(workdir))
  # Damage every data file of the newest checkpoint.
  for root, _, files in os.walk(
    os.path.join(workdir, 'checkpoints', str(newest))
  ):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'\x00garbage')
  again = experiment.run(tiny_config(tfds_dir, **SLOW), workdir)
  assert _comparable(again) == _comparable(uninterrupted[1])
  aside = os.listdir(os.path.join(workdir, 'damaged_checkpoints'))
  assert [name.split('_')[0] for name in aside] == [str(newest)]


def test_an_interrupted_sweep_skips_finished_runs(tfds_dir, tmp_path):
  config = tiny_config(tfds_dir, total_steps=2, eval_every=2)
  config.seeds = (0,)
  config.variants = {
    'baseline': {},
    'no_attention': {'model': {'use_attention': False}},
  }
  workdir = str(tmp_path / 'sweep')
  experiment.run_sweep(config, workdir)
  first = os.path.join(workdir, 'baseline', 'seed_0', 'metrics.jsonl')
  second = os.path.join(workdir, 'no_attention', 'seed_0', 'summary.json')
  before = os.stat(first).st_mtime_ns
  os.remove(second)  # As if the machine was lost during the second run.
  results = experiment.run_sweep(config, workdir)
  assert os.stat(first).st_mtime_ns == before
  assert os.path.exists(second)
  assert set(results) == {'baseline', 'no_attention'}
  no_attention = json.load(
    open(os.path.join(workdir, 'no_attention', 'seed_0', 'config.json'))
  )
  assert no_attention['model']['use_attention'] is False


def test_a_nan_loss_stops_the_run_naming_the_steps(
  tfds_dir, tmp_path, monkeypatch
):
  monkeypatch.setattr(
    train_lib,
    'cross_entropy',
    lambda logits, labels: jnp.full(labels.shape, jnp.nan),
  )
  workdir = str(tmp_path / 'nan')
  with pytest.raises(
    experiment.TrainingDiverged, match='between steps 0 and 2'
  ):
    experiment.run(tiny_config(tfds_dir), workdir)
  assert not os.path.exists(os.path.join(workdir, 'summary.json'))


def test_init_from_copies_matching_parameters(tfds_dir, tmp_path):
  source = str(tmp_path / 'source')
  experiment.run(tiny_config(tfds_dir, total_steps=2), source)
  pretrained = train_lib.load_run_params(source)
  frozen = ('stem/.*', 'embedding/.*', 'pos_embedding')
  target = str(tmp_path / 'target')
  experiment.run(
    tiny_config(
      tfds_dir,
      total_steps=2,
      seed=5,
      init_from=source,
      init_from_patterns=frozen,
      freeze=frozen,
    ),
    target,
  )
  after = train_lib.load_run_params(target)
  for path in ('stem/conv_0/kernel', 'embedding/kernel', 'pos_embedding'):
    assert (after[path] == pretrained[path]).all(), path
  assert not (
    after['shape_head/kernel'] == pretrained['shape_head/kernel']
  ).all()

  wider = str(tmp_path / 'wider')
  with pytest.raises(
    config_lib.ConfigError,
    match=r"'embedding/kernel' has shape \(16, 32\) in the source run but "
    r'\(16, 64\) here',
  ):
    experiment.run(
      tiny_config(tfds_dir, init_from=source, **{'model.width': 64}), wider
    )
