"""The report writer on synthetic sweeps whose findings are known."""

import csv
import json
import os
import subprocess
import sys

import pytest

from scfail import report

BENCHMARKS = (
  'iid',
  'unseen_pairs',
  'texture',
  'lighting',
  'scale',
  'background',
  'grayscale',
  'cue_conflict',
)
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# Seeds 0 and 1 sit this far below and above a variant's mean: the sample
# standard deviation is 0.00707 and the noise threshold of two seeds against
# two is 2 * sqrt(2 * 0.00707**2 / 2) = 0.0141.
JITTER = 0.005


def final_metrics(shape=0.8, color=0.7, bias=0.6, czsl_auc=0.3, **exact):
  """Final eval scalars: every benchmark at `shape` and `color` accuracy."""
  m = {}
  for b in BENCHMARKS:
    m[f'eval/{b}/shape_acc'] = shape
    if b != 'grayscale':
      m[f'eval/{b}/color_acc'] = color
  m['eval/cue_conflict/shape_bias'] = bias
  m['eval/cue_conflict/neither'] = 0.1
  m['eval/czsl/auc'] = czsl_auc
  m['eval/czsl/best_hm'] = 0.4
  m['eval/czsl/best_seen'] = 0.8
  m['eval/czsl/best_unseen'] = 0.5
  m['eval/czsl/best_hm_bias'] = 1.5
  m.update({k.replace('__', '/'): v for k, v in exact.items()})
  return m


def write_run(run_dir, config, evals, finished=True, last_step=200):
  """A run directory: config, train and eval lines, maybe a summary."""
  os.makedirs(run_dir)
  with open(os.path.join(run_dir, 'config.json'), 'w') as f:
    json.dump(config, f)
  lines = []
  for step in range(0, last_step + 1, 50):
    lines.append(
      {'step': step, 'train/loss': 2.0 - step / 200, 'train/img_per_sec': 1e3}
    )
    if step and step % 100 == 0:
      # Eval curves rise linearly to their final values.
      lines.append(
        {'step': step, **{k: v * step / 200 for k, v in evals.items()}}
      )
  with open(os.path.join(run_dir, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(line) + '\n' for line in lines)
  if finished:
    summary = {
      'step': last_step,
      'num_params': 12345,
      'frozen': [],
      'train/loss': 1.0,
      'confusion/shape': [[1, 0], [0, 1]],
      'confusion/color': [[1, 0], [0, 1]],
      **evals,
    }
    with open(os.path.join(run_dir, 'summary.json'), 'w') as f:
      json.dump(summary, f)


def base_config(seed, **changes):
  config = {
    'seed': seed,
    'dataset': 'scfail_shapes/32px',
    'total_steps': 200,
    'batch_size': 128,
    'learning_rate': 0.002,
    'correlation': 0.8,
    'freeze': [],
    'model': {'width': 96, 'depth': 3, 'num_heads': 4, 'use_attention': True},
  }
  for key, value in changes.items():
    if key == 'use_attention':
      config['model'] = {**config['model'], 'use_attention': value}
    else:
      config[key] = value
  return config


def jittered(metrics, seed):
  sign = -1 if seed == 0 else 1
  return {k: v + sign * JITTER for k, v in metrics.items()}


def make_sweep(root, frozen_metrics):
  """baseline, frozen_embeddings (given) and no_attention (within noise).

  no_attention has a third, unfinished seed whose numbers would change the
  table if it were counted.
  """
  variants = {
    'baseline': ({}, final_metrics()),
    'frozen_embeddings': ({'freeze': ['stem/.*']}, frozen_metrics),
    'no_attention': (
      {'use_attention': False},
      {k: v + 0.003 for k, v in final_metrics().items()},
    ),
  }
  for variant, (changes, metrics) in variants.items():
    for seed in (0, 1):
      write_run(
        os.path.join(root, variant, f'seed_{seed}'),
        base_config(seed, **changes),
        jittered(metrics, seed),
      )
  write_run(
    os.path.join(root, 'no_attention', 'seed_2'),
    base_config(2, use_attention=False),
    final_metrics(shape=0.111, color=0.111),
    finished=False,
    last_step=100,
  )
  return str(root)


# frozen_embeddings: iid shape 0.2 worse, iid color 0.15 better, shape bias
# 0.2 lower, CZSL AUC 0.1 worse; everything else as the baseline.
FROZEN = final_metrics(
  bias=0.4, czsl_auc=0.2, eval__iid__shape_acc=0.6, eval__iid__color_acc=0.85
)
# The same ablation with the iid numbers swapped in direction.
FROZEN_SWAPPED = final_metrics(
  bias=0.8, czsl_auc=0.4, eval__iid__shape_acc=0.95, eval__iid__color_acc=0.55
)


@pytest.fixture(scope='module')
def written(tmp_path_factory):
  workdir = make_sweep(tmp_path_factory.mktemp('sweep'), FROZEN)
  path = report.write_report(workdir)
  with open(path) as f:
    return workdir, path, f.read()


def section(text, variant):
  """The findings about one ablation."""
  start = text.index(f'### `{variant}` against `baseline`')
  end = text.find('\n### ', start + 1)
  return text[start:end]


def final_table_row(text, metric):
  table = text[text.index('## Final metrics') : text.index('## Findings')]
  (row,) = [r for r in table.splitlines() if r.startswith(f'| {metric} |')]
  return [cell.strip() for cell in row.strip('|').split('|')]


def test_load_sweep(written):
  workdir, _, _ = written
  sweep = report.load_sweep(workdir)
  assert list(sweep) == ['baseline', 'frozen_embeddings', 'no_attention']
  assert list(sweep['no_attention']) == [0, 1, 2]
  run = sweep['baseline'][1]
  assert run.config['seed'] == 1 and run.finished
  assert run.summary['eval/iid/shape_acc'] == pytest.approx(0.805)
  assert run.metrics[0] == {
    'step': 0,
    'train/loss': 2.0,
    'train/img_per_sec': 1e3,
  }
  assert sweep['no_attention'][2].summary is None
  assert sweep['no_attention'][2].last_step == 100
  steps, values = run.curve('eval/iid/shape_acc')
  assert steps.tolist() == [100, 200]
  assert values.tolist() == pytest.approx([0.4025, 0.805])


def test_results_csv(written):
  workdir, _, _ = written
  with open(os.path.join(workdir, 'report', 'results.csv')) as f:
    rows = list(csv.DictReader(f))
  assert [(r['variant'], r['seed']) for r in rows] == [
    ('baseline', '0'),
    ('baseline', '1'),
    ('frozen_embeddings', '0'),
    ('frozen_embeddings', '1'),
    ('no_attention', '0'),
    ('no_attention', '1'),
  ]
  header = list(rows[0])
  metric_keys = sorted([*final_metrics(), 'num_params', 'step', 'train/loss'])
  assert header == ['variant', 'seed', *metric_keys]
  for r in rows:
    summary_path = os.path.join(
      workdir, r['variant'], f'seed_{r["seed"]}', 'summary.json'
    )
    with open(summary_path) as f:
      summary = json.load(f)
    for key in metric_keys:
      assert float(r[key]) == summary[key], (r['variant'], r['seed'], key)
  by_run = {(r['variant'], r['seed']): r for r in rows}
  assert float(by_run['frozen_embeddings', '0']['eval/iid/shape_acc']) == (
    0.6 - JITTER
  )


def test_figures_are_pngs(written):
  workdir, _, text = written
  names = [
    'figure_1_baseline.png',
    'figure_appendix_frozen_embeddings.png',
    'figure_appendix_no_attention.png',
  ]
  for name in names:
    path = os.path.join(workdir, 'report', name)
    with open(path, 'rb') as f:
      data = f.read()
    assert data.startswith(PNG_SIGNATURE), name
    assert len(data) > 10_000, name
    assert f']({name})' in text
  assert not os.path.exists(
    os.path.join(workdir, 'report', 'figure_appendix_baseline.png')
  )


def test_opposite_directions_found(written):
  _, _, text = written
  found = section(text, 'frozen_embeddings')
  assert (
    '- `iid`: shape accuracy is worse by 0.200 (0.600 against 0.800, noise '
    '0.014); color accuracy is better by 0.150 (0.850 against 0.700, noise '
    '0.014). Shape and color moved in opposite directions.'
  ) in found
  assert 'Shape and color moved in opposite directions on `iid`.' in found
  assert "1 better than the baseline's, 1 worse and 13 within noise" in found
  assert '- `texture`: shape accuracy is within noise (+0.000' in found
  assert 'Neither moved beyond noise.' in found
  assert 'Shape bias is lower by 0.200' in found
  assert 'more follow color than in the baseline' in found
  assert 'AUC is worse by 0.100' in found
  assert 'best harmonic mean is within noise' in found


def test_within_noise_found(written):
  _, _, text = written
  found = section(text, 'no_attention')
  assert 'Finished seeds: 2 against 2.' in found
  assert "0 better than the baseline's, 0 worse and 15 within noise" in found
  assert 'on no benchmark' in found
  assert '- `iid`: shape accuracy is within noise (+0.003:' in found
  assert 'Shape bias is within noise' in found
  for word in (' is better', ' is worse', ' is higher', ' is lower'):
    assert word not in found


def test_unfinished_run_excluded(written):
  _, _, text = written
  assert '`no_attention/seed_2` (last logged step 100 of 200)' in text
  assert '6 of 7 runs have finished' in text
  header = final_table_row(text, 'metric')
  assert header == [
    'metric',
    '`baseline` (2 seeds)',
    '`frozen_embeddings` (2 seeds)',
    '`no_attention` (2 seeds)',
  ]
  assert final_table_row(text, '`iid/shape_acc`') == [
    '`iid/shape_acc`',
    '0.800 ± 0.007',
    '0.600 ± 0.007',
    '0.803 ± 0.007',
  ]
  assert '0.111' not in text
  assert 'unfinished: 2' in text  # The hyperparameter table's seeds row.


def test_hyperparameters(written):
  _, _, text = written
  table = text[text.index('## Hyperparameters') : text.index('## Final')]
  assert '| attention | yes | yes | no |' in table
  assert '| frozen parameters (regexes) | none | `stem/.*` | none |' in table
  assert '| seeds | 0, 1 | 0, 1 | 0, 1, 2 (unfinished: 2) |' in table
  assert '- `no_attention`: `model.use_attention`: yes -> no' in table


def test_swapping_the_numbers_flips_the_findings(tmp_path):
  workdir = make_sweep(tmp_path, FROZEN_SWAPPED)
  with open(report.write_report(workdir)) as f:
    found = section(f.read(), 'frozen_embeddings')
  assert (
    '- `iid`: shape accuracy is better by 0.150 (0.950 against 0.800, noise '
    '0.014); color accuracy is worse by 0.150 (0.550 against 0.700, noise '
    '0.014). Shape and color moved in opposite directions.'
  ) in found
  assert 'shape accuracy is worse' not in found
  assert 'Shape bias is higher by 0.200' in found
  assert 'more follow shape than in the baseline' in found
  assert 'AUC is better by 0.100' in found


def test_same_direction(tmp_path):
  both_worse = final_metrics(
    eval__lighting__shape_acc=0.5, eval__lighting__color_acc=0.4
  )
  workdir = make_sweep(tmp_path, both_worse)
  with open(report.write_report(workdir)) as f:
    found = section(f.read(), 'frozen_embeddings')
  assert 'Shape and color both got worse.' in found
  assert 'on no benchmark' in found


def test_compare_noise_rule():
  # Two seeds each: 2 standard errors of the difference, at least 0.01.
  c = report.compare([0.79, 0.81], [0.75, 0.77])
  std = 0.02 / 2**0.5  # Of either pair, with ddof=1.
  assert c.noise == pytest.approx(2 * (std**2 / 2 + std**2 / 2) ** 0.5)
  assert c.verdict == report.WORSE and c.delta == pytest.approx(-0.04)
  assert report.compare([0.8, 0.8], [0.805, 0.805]).noise == 0.01
  assert report.compare([0.8, 0.8], [0.805, 0.805]).verdict == 'within noise'
  # One seed: the fixed tolerance.
  assert report.compare([0.8], [0.79]).verdict == report.WITHIN_NOISE
  assert report.compare([0.8], [0.77]).noise == report.ONE_SEED_TOLERANCE
  assert report.compare([0.8], [0.77]).verdict == report.WORSE
  assert report.compare([0.5], [0.6], None).verdict == report.HIGHER
  assert report.compare([0.5], [float('nan')]).verdict == report.NO_DATA


def test_no_runs(tmp_path):
  with pytest.raises(ValueError, match='holds no runs'):
    report.write_report(str(tmp_path))


def test_command_line(tmp_path):
  workdir = make_sweep(tmp_path, FROZEN)
  result = subprocess.run(
    [sys.executable, '-m', 'scfail.report', f'--workdir={workdir}'],
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == os.path.join(workdir, 'report', 'report.md')
  assert os.path.exists(os.path.join(workdir, 'report', 'results.csv'))


def test_one_seed_nan_and_cut_line(tmp_path):
  """One seed a side: the fixed tolerance; NaN shape bias; a cut line."""
  write_run(
    str(tmp_path / 'baseline' / 'seed_0'),
    base_config(0),
    final_metrics(bias=float('nan')),
  )
  write_run(
    str(tmp_path / 'no_attention' / 'seed_0'),
    base_config(0, use_attention=False),
    final_metrics(shape=0.79, color=0.75, bias=float('nan')),
  )
  with open(tmp_path / 'baseline' / 'seed_0' / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 250, "train/lo')  # A run killed mid-write.
  sweep = report.load_sweep(str(tmp_path))
  assert sweep['baseline'][0].last_step == 200
  with open(report.write_report(str(tmp_path))) as f:
    found = section(f.read(), 'no_attention')
  assert 'Finished seeds: 1 against 1.' in found
  assert (
    '- `iid`: shape accuracy is within noise (-0.010: 0.790 against 0.800, '
    'noise 0.020); color accuracy is better by 0.050 (0.750 against 0.700, '
    'noise 0.020). Only color moved beyond noise.'
  ) in found
  assert 'Shape bias has no data on one side.' in found


def test_importable_next_to_main():
  """scfail.main defines --workdir and imports this module: no clash."""
  from scfail import main  # noqa: F401
  from scfail import report as again

  assert again.write_report is report.write_report
