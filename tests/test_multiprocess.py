"""Two real processes on localhost train like one process with 4 devices."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np

from scfail import train as train_lib
from tests.conftest import ROOT

COMMON = [
  '--config=configs/tiny.py',
  '--config.total_steps=8',
  '--config.checkpoint_every=2',
  '--config.eval_every=4',
  # Same input shards in both set-ups: the same global batches.
  '--config.input_shards=2',
]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
  return {
    **os.environ,
    'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
  }


def _two_processes(tfds_dir: str, workdir: str) -> list[subprocess.Popen]:
  port = _free_port()
  return [
    subprocess.Popen(
      [
        sys.executable,
        '-m',
        'scfail.main',
        *COMMON,
        f'--config.data_dir={tfds_dir}',
        f'--workdir={workdir}',
        f'--coordinator_address=127.0.0.1:{port}',
        '--num_processes=2',
        f'--process_id={i}',
        '--distributed_timeout=60',
      ],
      cwd=ROOT,
      env=_env(2),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]


def _finish(processes: list[subprocess.Popen]) -> None:
  for p in processes:
    _, err = p.communicate(timeout=400)
    assert p.returncode == 0, err[-3000:]


def _files(workdir: str) -> set[str]:
  found = set()
  for root, _, files in os.walk(workdir):
    rel = os.path.relpath(root, workdir)
    if rel.startswith('tb'):
      found.add('tb/<events>')
      continue
    if rel.startswith('checkpoints' + os.sep):
      # Orbax's file names inside a checkpoint hold process-specific ids.
      found.add(os.path.join(*rel.split(os.sep)[:2]))
      continue
    found.update(os.path.join(rel, f) for f in files)
  return found


def test_two_processes_equal_one_and_resume_after_a_kill(tfds_dir, tmp_path):
  multi, single, killed = (str(tmp_path / n) for n in ('multi', 'one', 'k'))
  processes = _two_processes(tfds_dir, multi)
  _finish(processes)
  one = subprocess.run(
    [
      sys.executable,
      '-m',
      'scfail.main',
      *COMMON,
      f'--config.data_dir={tfds_dir}',
      f'--workdir={single}',
    ],
    cwd=ROOT,
    env=_env(4),
    capture_output=True,
    text=True,
  )
  assert one.returncode == 0, one.stderr[-3000:]

  # The same files, written once (by process 0) where only one is wanted.
  assert _files(multi) == _files(single)
  with open(os.path.join(multi, 'metrics.jsonl')) as f:
    multi_lines = [json.loads(line) for line in f]
  with open(os.path.join(single, 'metrics.jsonl')) as f:
    single_lines = [json.loads(line) for line in f]
  assert [r['step'] for r in multi_lines] == [r['step'] for r in single_lines]

  # The same parameters and metrics, up to the order of float reductions.
  a = train_lib.load_run_params(multi)
  b = train_lib.load_run_params(single)
  assert a.keys() == b.keys()
  for path in a:
    np.testing.assert_allclose(a[path], b[path], rtol=1e-3, atol=1e-4)
  first = [r for r in multi_lines if 'train/loss' in r][0]
  first_single = [r for r in single_lines if 'train/loss' in r][0]
  np.testing.assert_allclose(
    first['train/loss'], first_single['train/loss'], rtol=1e-5
  )
  for r, s in zip(multi_lines, single_lines, strict=True):
    for key in r:
      if key.endswith('_acc'):
        assert abs(r[key] - s[key]) <= 2 / 64, key

  # Kill both processes after a checkpoint, start both again: the run
  # continues exactly.
  processes = _two_processes(tfds_dir, killed)
  checkpoint = os.path.join(killed, 'checkpoints', '4')
  start = time.time()
  while not os.path.exists(os.path.join(checkpoint, 'commit_success.txt')):
    assert all(p.poll() is None for p in processes), 'exited early'
    assert time.time() - start < 300
    time.sleep(0.05)
  for p in processes:
    p.send_signal(signal.SIGKILL)
    p.wait()
  assert not os.path.exists(os.path.join(killed, 'summary.json'))
  _finish(_two_processes(tfds_dir, killed))
  with open(os.path.join(multi, 'summary.json')) as f:
    expected = json.load(f)
  with open(os.path.join(killed, 'summary.json')) as f:
    resumed = json.load(f)
  for key, value in expected.items():
    if key.startswith(('eval/', 'confusion/', 'train/loss')):
      assert resumed[key] == value, key


def test_an_unreachable_coordinator_is_one_clear_line(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'scfail.main',
      '--config=configs/tiny.py',
      f'--workdir={tmp_path}',
      f'--coordinator_address=127.0.0.1:{_free_port()}',
      '--num_processes=2',
      '--process_id=1',
      '--distributed_timeout=3',
    ],
    cwd=ROOT,
    env=_env(2),
    capture_output=True,
    text=True,
  )
  assert result.returncode == 1
  errors = [x for x in result.stderr.splitlines() if x.startswith('error:')]
  assert len(errors) == 1
  assert (
    'Could not reach the coordinator (process 0) at 127.0.0.1:' in (errors[0])
  )
  assert 'Traceback' not in result.stderr
