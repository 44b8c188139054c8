"""Real runs of a tiny config: TFDS build, training, checkpoints, resume."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from scfail import config_lib, experiment
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def finished_run(tfds_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  summary = experiment.run(tiny_config(tfds_dir), workdir)
  return workdir, summary


def test_a_run_writes_every_file(finished_run):
  workdir, summary = finished_run
  assert sorted(os.listdir(workdir)) == [
    'checkpoints',
    'config.json',
    'metrics.jsonl',
    'summary.json',
    'tb',
  ]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  train_steps = [r['step'] for r in records if 'train/loss' in r]
  eval_steps = [r['step'] for r in records if 'eval/iid/shape_acc' in r]
  assert train_steps == [2, 4, 6] and eval_steps == [3, 6]
  for key in (
    'train/learning_rate',
    'train/img_per_sec',
    'train/grad_norm',
    'eval/grayscale/shape_acc',
    'eval/czsl/auc',
    'eval/czsl/best_hm',
    'eval/cue_conflict/shape_bias',
  ):
    assert key in summary, key
  assert 'eval/grayscale/color_acc' not in summary
  assert len(summary['confusion/shape']) == 8
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['width'] == 32


def test_resume_from_a_middle_checkpoint_ends_bit_identical(
  finished_run, tmp_path
):
  workdir, summary = finished_run
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(workdir, resumed)
  # As if the run had been killed just after its step-3 checkpoint, in the
  # middle of writing a metrics line.
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '6'))
  os.remove(os.path.join(resumed, 'summary.json'))
  with open(os.path.join(resumed, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 5, "train/lo')
  config = json.load(open(os.path.join(workdir, 'config.json')))
  again = experiment.run(tiny_config(config['data_dir']), resumed)
  for key, value in summary.items():
    if key.startswith(('eval/', 'train/loss', 'train/param_norm')):
      assert again[key] == value, key
  with open(os.path.join(resumed, 'metrics.jsonl')) as f:
    steps = [json.loads(line)['step'] for line in f]
  assert steps == sorted(steps)  # No duplicated lines after the resume.


def test_a_workdir_with_another_config_is_refused(finished_run, tfds_dir):
  workdir, _ = finished_run
  other = tiny_config(tfds_dir, learning_rate=0.5)
  with pytest.raises(config_lib.ConfigError, match='--overwrite'):
    experiment.run(other, workdir)


def test_pmap_run(tfds_dir, tmp_path):
  summary = experiment.run(
    tiny_config(tfds_dir, parallelism='pmap', total_steps=3),
    str(tmp_path),
  )
  assert 0.0 <= summary['eval/iid/shape_acc'] <= 1.0


@pytest.mark.parametrize(
  'override, message',
  [
    (
      '--config.model.num_heads=5',
      'error: config.model.width=96 is not divisible by '
      'config.model.num_heads=5.',
    ),
    (
      '--config.model.widht=64',
      "error: --config.model.widht: the config has no field 'widht'. Did "
      "you mean 'width'? The fields are those of scfail/config_lib.py "
      'base_config().',
    ),
  ],
)
def test_command_line_reports_a_bad_value_in_one_line(
  tfds_dir, tmp_path, override, message
):
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'scfail.main',
      '--config=configs/baseline.py',
      f'--workdir={tmp_path}',
      override,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env={**os.environ, 'TFDS_DATA_DIR': tfds_dir},
  )
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  errors = [
    line for line in result.stderr.splitlines() if line.startswith('error:')
  ]
  assert errors == [message]
  assert os.listdir(tmp_path) == []  # Nothing written before the check.


def test_a_finished_run_is_not_trained_again(finished_run, tfds_dir, tmp_path):
  workdir, summary = finished_run
  assert experiment.run(tiny_config(tfds_dir), workdir) == json.load(
    open(os.path.join(workdir, 'summary.json'))
  )
  # Killed after its last checkpoint but before writing its summary: the
  # final evaluation is done again, with the same numbers.
  copy = str(tmp_path / 'copy')
  shutil.copytree(workdir, copy)
  os.remove(os.path.join(copy, 'summary.json'))
  again = experiment.run(tiny_config(tfds_dir), copy)
  for key, value in summary.items():
    if key.startswith(('eval/', 'confusion/')):
      assert again[key] == value, key
