r"""The study's report: figures, tables and findings drawn from a sweep's logs.

python -m scfail.report --workdir=<dir>

A sweep directory holds one run directory per variant and seed,
`<workdir>/<variant>/seed_<n>/`, each with `config.json`, `metrics.jsonl`
and, once the run has finished, `summary.json`. `write_report` reads them
all (`load_sweep`) and writes `<workdir>/report/`:

- `figure_1_baseline.png`: the baseline's shape and color accuracy on every
  benchmark over training, mean and min-max band over seeds;
- `figure_appendix_<variant>.png`: each ablation's curves against the
  baseline's, one panel per benchmark;
- `results.csv`: the final scalars of every finished run;
- `report.md`: the figures, a hyperparameter table, the final metrics as
  mean and standard deviation over seeds, and findings computed from them.

The variant named `baseline` is the reference; every other variant is an
ablation. Unfinished runs (no `summary.json`) are drawn in the figures but
left out of the table, `results.csv` and the findings.

Noise: an ablation's metric is "within noise" of the baseline's when the
difference of their means over seeds is at most `NOISE_STANDARD_ERRORS`
standard errors of that difference (Welch: sqrt(s_b^2/n_b + s_a^2/n_a),
with sample standard deviations), and never less than `NOISE_FLOOR`. When
either side has a single finished seed there is no standard deviation, and
the threshold is the fixed `ONE_SEED_TOLERANCE`.

Figures are drawn on `matplotlib.figure.Figure` objects with an Agg canvas,
so that neither pyplot's global state nor a notebook's backend is touched.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from absl import logging
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from scfail import benchmarks as benchmarks_lib

BASELINE = 'baseline'
REPORT_DIR = 'report'

# The noise rule of the findings (see the module docstring).
NOISE_STANDARD_ERRORS = 2.0
NOISE_FLOOR = 0.01
ONE_SEED_TOLERANCE = 0.02

# Verdicts of `compare`.
BETTER, WORSE, WITHIN_NOISE = 'better', 'worse', 'within noise'
HIGHER, LOWER, NO_DATA = 'higher', 'lower', 'no data'

HEADS = ('shape', 'color')
SHAPE_BIAS = 'eval/cue_conflict/shape_bias'
NEITHER = 'eval/cue_conflict/neither'
# CZSL metrics: key suffix, label, whether higher is better (None: neither).
CZSL = (
  ('auc', 'AUC', True),
  ('best_hm', 'best harmonic mean', True),
  ('best_seen', 'best seen accuracy', True),
  ('best_unseen', 'best unseen accuracy', True),
  ('best_hm_bias', 'calibration bias at the best harmonic mean', None),
)
# Summary keys that are not comparable between runs: a resumed run's wall
# time counts only its last session.
_NOT_IN_TABLE = frozenset({'wall_seconds_this_session'})

_SEED_DIR = re.compile(r'seed_(\d+)')
_ACC_KEY = re.compile(r'eval/(?P<bench>[^/]+)/(?P<head>shape|color)_acc')
_PNG_DPI = 110


@dataclasses.dataclass
class RunRecord:
  """One run's logs.

  Attributes:
    variant: the variant's name (its directory in the sweep).
    seed: the seed, from the directory name `seed_<n>`.
    path: the run directory.
    config: `config.json`, or an empty dict when it is missing.
    metrics: the lines of `metrics.jsonl`, in order.
    summary: `summary.json`, or None while the run is unfinished.
  """

  variant: str
  seed: int
  path: str
  config: dict[str, Any]
  metrics: list[dict[str, Any]]
  summary: dict[str, Any] | None

  @property
  def finished(self) -> bool:
    return self.summary is not None

  @property
  def last_step(self) -> int:
    """The highest step logged in `metrics.jsonl` (0 if none)."""
    return max((int(m['step']) for m in self.metrics if 'step' in m), default=0)

  def curve(self, key: str) -> tuple[np.ndarray, np.ndarray]:
    """The steps at which `key` was logged and its values there.

    A step logged twice keeps its last value.
    """
    points: dict[int, float] = {}
    for line in self.metrics:
      value = line.get(key)
      if 'step' in line and isinstance(value, int | float):
        points[int(line['step'])] = float(value)
    steps = sorted(points)
    return (
      np.asarray(steps, np.int64),
      np.asarray([points[s] for s in steps], np.float64),
    )

  def final_scalars(self) -> dict[str, float]:
    """The numeric scalars of `summary.json` (empty while unfinished)."""
    if self.summary is None:
      return {}
    return {
      k: v
      for k, v in self.summary.items()
      if isinstance(v, int | float) and not isinstance(v, bool)
    }


Sweep = dict[str, dict[int, RunRecord]]


# Reading.


def _read_json(path: str) -> dict[str, Any] | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path} is not valid JSON: {e}') from e


def _read_jsonl(path: str) -> list[dict[str, Any]]:
  """The lines of a metrics.jsonl; skips lines cut short by a killed run."""
  if not os.path.exists(path):
    return []
  lines = []
  with open(path) as f:
    for number, text in enumerate(f, 1):
      if not text.strip():
        continue
      try:
        lines.append(json.loads(text))
      except json.JSONDecodeError:
        logging.warning('%s:%d is not JSON; skipping it.', path, number)
  return lines


def load_sweep(workdir: str) -> Sweep:
  """Reads every run of a sweep directory.

  Args:
    workdir: a directory holding `<variant>/seed_<n>/` run directories.

  Returns:
    variant -> seed -> `RunRecord`, the baseline first, then the other
    variants by name; seeds in increasing order. Directories that hold none
    of `config.json`, `metrics.jsonl` and `summary.json` are skipped.

  Raises:
    FileNotFoundError: `workdir` is not a directory.
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'No sweep directory {workdir!r}.')
  sweep: Sweep = {}
  for variant in sorted(os.listdir(workdir)):
    variant_dir = os.path.join(workdir, variant)
    if variant == REPORT_DIR or not os.path.isdir(variant_dir):
      continue
    runs: dict[int, RunRecord] = {}
    for name in os.listdir(variant_dir):
      match = _SEED_DIR.fullmatch(name)
      run_dir = os.path.join(variant_dir, name)
      if not match or not os.path.isdir(run_dir):
        continue
      config = _read_json(os.path.join(run_dir, 'config.json'))
      metrics = _read_jsonl(os.path.join(run_dir, 'metrics.jsonl'))
      summary = _read_json(os.path.join(run_dir, 'summary.json'))
      if config is None and not metrics and summary is None:
        continue
      seed = int(match[1])
      runs[seed] = RunRecord(
        variant, seed, run_dir, config or {}, metrics, summary
      )
    if runs:
      sweep[variant] = dict(sorted(runs.items()))
  order = sorted(sweep, key=lambda v: (v != BASELINE, v))
  return {v: sweep[v] for v in order}


# Statistics.


@dataclasses.dataclass(frozen=True)
class Stat:
  """A metric over seeds.

  Attributes:
    mean: the mean of the finite values (NaN if none).
    std: their sample standard deviation, ddof=1 (NaN if fewer than two).
    n: how many finite values there are.
  """

  mean: float
  std: float
  n: int


def summarize(values: Iterable[float]) -> Stat:
  """Mean and sample standard deviation of the finite values."""
  v = np.asarray(
    [x for x in values if x is not None and math.isfinite(x)], np.float64
  )
  mean = float(v.mean()) if v.size else math.nan
  std = float(v.std(ddof=1)) if v.size > 1 else math.nan
  return Stat(mean, std, int(v.size))


@dataclasses.dataclass(frozen=True)
class Comparison:
  """An ablation's metric against the baseline's.

  Attributes:
    baseline: the baseline's values over seeds.
    ablation: the ablation's values over seeds.
    delta: ablation mean minus baseline mean.
    noise: the largest |delta| still called within noise.
    verdict: `BETTER`, `WORSE` or `WITHIN_NOISE` for a metric where higher
      is better; `HIGHER`, `LOWER` or `WITHIN_NOISE` for one with no better
      direction; `NO_DATA` when either side has no finite value.
  """

  baseline: Stat
  ablation: Stat
  delta: float
  noise: float
  verdict: str


def noise_threshold(baseline: Stat, ablation: Stat) -> float:
  """The largest difference of means that is still within noise.

  `NOISE_STANDARD_ERRORS` standard errors of the difference of means (at
  least `NOISE_FLOOR`) when both sides have two or more seeds; otherwise
  `ONE_SEED_TOLERANCE`.
  """
  if baseline.n < 2 or ablation.n < 2:
    return ONE_SEED_TOLERANCE
  se = math.sqrt(baseline.std**2 / baseline.n + ablation.std**2 / ablation.n)
  return max(NOISE_STANDARD_ERRORS * se, NOISE_FLOOR)


def compare(
  baseline_values: Sequence[float],
  ablation_values: Sequence[float],
  higher_is_better: bool | None = True,
) -> Comparison:
  """Classifies an ablation's values against the baseline's.

  Args:
    baseline_values: the baseline's final values, one per seed.
    ablation_values: the ablation's final values, one per seed.
    higher_is_better: True for accuracies; None for a metric with no better
      direction (shape bias), whose verdict is then higher or lower.

  Returns:
    The `Comparison`; see `noise_threshold` for what counts as noise.
  """
  b, a = summarize(baseline_values), summarize(ablation_values)
  if not b.n or not a.n:
    return Comparison(b, a, math.nan, math.nan, NO_DATA)
  delta = a.mean - b.mean
  noise = noise_threshold(b, a)
  if abs(delta) <= noise:
    verdict = WITHIN_NOISE
  elif higher_is_better is None:
    verdict = HIGHER if delta > 0 else LOWER
  else:
    verdict = BETTER if (delta > 0) == higher_is_better else WORSE
  return Comparison(b, a, delta, noise, verdict)


def _finished(runs: dict[int, RunRecord]) -> list[RunRecord]:
  return [r for r in runs.values() if r.finished]


def _finals(runs: dict[int, RunRecord], key: str) -> list[float]:
  """A key's final value in every finished run that has it."""
  return [
    r.final_scalars()[key] for r in _finished(runs) if key in r.final_scalars()
  ]


def seed_band(
  runs: Iterable[RunRecord], key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
  """Mean, minimum and maximum of a logged key over seeds, at each step.

  At a step that some seeds have not reached (an unfinished run), the
  statistics are over the seeds that have.

  Returns:
    (steps, mean, low, high), or None if no run logged `key`.
  """
  per_step: dict[int, list[float]] = {}
  for run in runs:
    for step, value in zip(*run.curve(key), strict=True):
      if math.isfinite(value):
        per_step.setdefault(int(step), []).append(float(value))
  if not per_step:
    return None
  steps = sorted(per_step)
  values = [np.asarray(per_step[s]) for s in steps]
  return (
    np.asarray(steps),
    np.asarray([v.mean() for v in values]),
    np.asarray([v.min() for v in values]),
    np.asarray([v.max() for v in values]),
  )


# Metric names and their order.


def _benchmark_rank(name: str) -> tuple[int, str]:
  known = list(benchmarks_lib.BENCHMARKS)
  return (known.index(name) if name in known else len(known), name)


def benchmarks_in(keys: Iterable[str]) -> list[str]:
  """The benchmarks with an accuracy among `keys`, in the study's order."""
  found = {m['bench'] for k in keys if (m := _ACC_KEY.fullmatch(k))}
  return sorted(found, key=_benchmark_rank)


def _metric_rank(key: str) -> tuple:
  """Accuracies by benchmark (shape first), cue conflict, CZSL, the rest."""
  if m := _ACC_KEY.fullmatch(key):
    return (0, _benchmark_rank(m['bench']), HEADS.index(m['head']))
  if key in (SHAPE_BIAS, NEITHER):
    return (1, (SHAPE_BIAS, NEITHER).index(key))
  czsl = [f'eval/czsl/{suffix}' for suffix, _, _ in CZSL]
  if key in czsl:
    return (2, czsl.index(key))
  group = 3 if key.startswith('eval/') else 4 if key.startswith('train/') else 5
  return (group, key)


def _final_keys(sweep: Sweep) -> set[str]:
  """Every numeric scalar key of every finished run's summary."""
  return {
    k for rs in sweep.values() for r in rs.values() for k in r.final_scalars()
  }


# Figures.


def _new_figure(width: float, height: float) -> Figure:
  fig = Figure(figsize=(width, height), layout='constrained')
  FigureCanvasAgg(fig)
  return fig


def _benchmark_colors(names: Sequence[str]) -> dict[str, Any]:
  cmap = colormaps['tab10']
  return {name: cmap(i % 10) for i, name in enumerate(names)}


def _seeds_phrase(runs: dict[int, RunRecord]) -> str:
  unfinished = sum(not r.finished for r in runs.values())
  text = f'{len(runs)} seed{"s" if len(runs) != 1 else ""}'
  return f'{text}, {unfinished} unfinished' if unfinished else text


def figure_baseline(runs: dict[int, RunRecord], path: str) -> None:
  """Draws the baseline's shape and color accuracy over training.

  Two panels: shape-centric (shape accuracy, solid lines) and color-centric
  (color accuracy, dashed lines); one line per benchmark, the mean over
  seeds, with the min-max band over seeds.

  Args:
    runs: the baseline's runs, seed -> record.
    path: where the PNG goes.
  """
  keys = {k for r in runs.values() for line in r.metrics for k in line}
  names = benchmarks_in(keys)
  colors = _benchmark_colors(names)
  fig = _new_figure(13, 5)
  axes = fig.subplots(1, 2, sharey=True)
  styles = (('-', 'solid'), ('--', 'dashed'))
  for ax, head, (style, style_name) in zip(axes, HEADS, styles, strict=True):
    drawn = 0
    for name in names:
      band = seed_band(runs.values(), f'eval/{name}/{head}_acc')
      if band is None:
        continue
      steps, mean, low, high = band
      ax.plot(
        steps, mean, style, color=colors[name], label=name, marker='o', ms=3
      )
      ax.fill_between(steps, low, high, color=colors[name], alpha=0.15, lw=0)
      drawn += 1
    ax.set_title(f'{head}-centric: {head} accuracy ({style_name} lines)')
    ax.set_xlabel('training step')
    ax.set_ylabel('accuracy (fraction correct)')
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if drawn:
      ax.legend(title='benchmark', fontsize='small', loc='best')
    else:
      ax.text(
        0.5, 0.5, 'no evaluation logged', ha='center', transform=ax.transAxes
      )
  fig.suptitle(
    f'Figure 1: baseline shape and color accuracy over training '
    f'({_seeds_phrase(runs)}; line: mean over seeds, band: min to max)'
  )
  fig.savefig(path, dpi=_PNG_DPI)


def _appendix_panels(keys: set[str]) -> list[tuple[str, list[str], str]]:
  """(title, keys drawn, y label) for each panel of an appendix figure."""
  panels = []
  for name in benchmarks_in(keys):
    drawn = [f'eval/{name}/{h}_acc' for h in HEADS]
    panels.append((name, [k for k in drawn if k in keys], 'accuracy'))
  extra = [
    (SHAPE_BIAS, 'cue_conflict: shape bias', 'shape bias (fraction)'),
    ('eval/czsl/auc', 'CZSL: AUC', 'area (accuracy x accuracy)'),
    ('eval/czsl/best_hm', 'CZSL: best harmonic mean', 'accuracy'),
    ('train/loss', 'training loss', 'weighted cross-entropy (nats)'),
  ]
  panels += [(title, [k], unit) for k, title, unit in extra if k in keys]
  return panels


def figure_appendix(
  variant: str,
  runs: dict[int, RunRecord],
  baseline: dict[int, RunRecord] | None,
  path: str,
) -> None:
  """Draws an ablation's curves against the baseline's, per benchmark.

  One panel per benchmark (shape accuracy solid, color accuracy dashed),
  then shape bias, CZSL AUC and best harmonic mean, and the training loss;
  the baseline in gray, the ablation in color; mean and min-max band over
  seeds.

  Args:
    variant: the ablation's name.
    runs: the ablation's runs, seed -> record.
    baseline: the baseline's runs, or None when the sweep has none.
    path: where the PNG goes.
  """
  # The baseline is drawn wider, so that it shows where the curves agree.
  groups = [(variant, runs, 'tab:red', 1.5)]
  if baseline:
    groups.insert(0, (BASELINE, baseline, 'tab:gray', 3.0))
  keys = {
    k
    for _, rs, _, _ in groups
    for r in rs.values()
    for line in r.metrics
    for k in line
  }
  panels = _appendix_panels(keys)
  cols = 4
  rows = max(1, math.ceil(len(panels) / cols))
  fig = _new_figure(4 * cols, 3.2 * rows + 0.8)
  axes = np.asarray(fig.subplots(rows, cols, squeeze=False)).ravel()
  for ax, (title, drawn, unit) in zip(axes, panels, strict=False):
    for _, group_runs, color, width in groups:
      for key in drawn:
        band = seed_band(group_runs.values(), key)
        if band is None:
          continue
        steps, mean, low, high = band
        style = '--' if key.endswith('/color_acc') else '-'
        ax.plot(steps, mean, style, color=color, lw=width, marker='o', ms=2.5)
        ax.fill_between(steps, low, high, color=color, alpha=0.15, lw=0)
    ax.set_title(title)
    ax.set_xlabel('training step')
    ax.set_ylabel(unit)
    if unit == 'accuracy' or unit.endswith('(fraction)'):
      ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
  for ax in axes[len(panels) :]:
    ax.set_axis_off()
  if not panels:
    axes[0].text(
      0.5, 0.5, 'nothing logged yet', ha='center', transform=axes[0].transAxes
    )
  handles = []
  for name, group_runs, color, width in groups:
    label = f'{name} ({_seeds_phrase(group_runs)})'
    for style, head in (('-', 'shape'), ('--', 'color')):
      handles.append(
        Line2D(
          [], [], color=color, ls=style, lw=width, label=f'{label}: {head}'
        )
      )
  fig.legend(handles=handles, loc='outside lower center', ncols=len(handles))
  fig.suptitle(
    f'{variant} against {BASELINE} over training (line: mean over seeds, '
    'band: min to max; dashed: color accuracy, solid: the rest)'
  )
  fig.savefig(path, dpi=_PNG_DPI)


# Tables.


def write_results_csv(sweep: Sweep, path: str) -> list[str]:
  """Writes one row per finished run: variant, seed, every final scalar.

  Returns:
    The metric columns, sorted; a run without a key leaves its cell empty.
  """
  columns = sorted(_final_keys(sweep))
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['variant', 'seed', *columns])
    for variant, runs in sweep.items():
      for run in _finished(runs):
        finals = run.final_scalars()
        writer.writerow(
          [
            variant,
            run.seed,
            *(repr(finals[k]) if k in finals else '' for k in columns),
          ]
        )
  return columns


def _md_cell(text: str) -> str:
  return text.replace('|', r'\|').replace('\n', ' ')


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
  lines = [
    '| ' + ' | '.join(map(_md_cell, header)) + ' |',
    '|' + '|'.join(['---'] * len(header)) + '|',
  ]
  lines += ['| ' + ' | '.join(map(_md_cell, row)) + ' |' for row in rows]
  return '\n'.join(lines)


def _format_value(value: Any) -> str:
  """A config value as a table cell."""
  if value is None or value == '':
    return '-'
  if isinstance(value, bool):
    return 'yes' if value else 'no'
  if isinstance(value, float):
    return f'{value:g}'
  if isinstance(value, list | tuple):
    return ', '.join(f'`{v}`' for v in value) if value else 'none'
  if isinstance(value, dict):
    return json.dumps(value, sort_keys=True)
  return str(value)


def _flatten(config: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in config.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


# The config fields of the hyperparameter table: dotted path, label.
HYPERPARAMETERS = (
  ('dataset', 'dataset'),
  ('image_size', 'image size (px)'),
  ('total_steps', 'total steps'),
  ('batch_size', 'batch size (global)'),
  ('learning_rate', 'peak learning rate'),
  ('warmup_steps', 'warmup steps'),
  ('weight_decay', 'weight decay'),
  ('correlation', 'shape-color correlation'),
  ('unseen_pairs_per_attribute', 'unseen pairs per shape and color'),
  ('model.width', 'model width'),
  ('model.depth', 'model depth (blocks)'),
  ('model.num_heads', 'attention heads'),
  ('model.use_attention', 'attention'),
  ('freeze', 'frozen parameters (regexes)'),
  ('init_from', 'initialised from'),
)


def hyperparameter_table(sweep: Sweep) -> str:
  """Markdown: one row per config field, one column per variant.

  A field whose value differs between a variant's seeds lists every value.
  """
  header = ['field', *(f'`{v}`' for v in sweep)]
  seeds_row = ['seeds']
  for runs in sweep.values():
    text = ', '.join(str(s) for s in runs)
    unfinished = [str(s) for s, r in runs.items() if not r.finished]
    if unfinished:
      text += f' (unfinished: {", ".join(unfinished)})'
    seeds_row.append(text)
  rows = [seeds_row]
  for field, label in HYPERPARAMETERS:
    row = [label]
    for runs in sweep.values():
      values = []
      for run in runs.values():
        cell = _format_value(_flatten(run.config).get(field))
        if cell not in values:
          values.append(cell)
      row.append(' / '.join(values))
    rows.append(row)
  return _table(header, rows)


def config_differences(sweep: Sweep) -> dict[str, list[str]]:
  """The config fields (seed aside) where each ablation leaves the baseline.

  Returns:
    ablation -> ['`field`: baseline value -> ablation value', ...], from
    each variant's first seed; empty when there is no baseline.
  """
  if BASELINE not in sweep:
    return {}
  reference = _flatten(next(iter(sweep[BASELINE].values())).config)
  out = {}
  for variant, runs in sweep.items():
    if variant == BASELINE:
      continue
    config = _flatten(next(iter(runs.values())).config)
    out[variant] = [
      f'`{k}`: {_format_value(reference.get(k))} -> '
      f'{_format_value(config.get(k))}'
      for k in sorted(set(reference) | set(config))
      if k != 'seed' and reference.get(k) != config.get(k)
    ]
  return out


def _format_stat(key: str, stat: Stat) -> str:
  if not stat.n:
    return '-'
  if key in ('num_params', 'step'):
    fmt = ',.0f'
  else:
    fmt = ',.1f' if abs(stat.mean) >= 100 else '.3f'
  text = format(stat.mean, fmt)
  if stat.n > 1:
    text += f' ± {format(stat.std, fmt)}'
  return text


def _metric_label(key: str) -> str:
  return f'`{key[5:]}`' if key.startswith('eval/') else f'`{key}`'


def final_table(sweep: Sweep) -> str:
  """Markdown: final metrics, mean ± sample std over finished seeds."""
  keys = sorted(_final_keys(sweep) - _NOT_IN_TABLE, key=_metric_rank)
  header = ['metric']
  for variant, runs in sweep.items():
    n = len(_finished(runs))
    header.append(f'`{variant}` ({n} seed{"s" if n != 1 else ""})')
  rows = []
  for key in keys:
    row = [_metric_label(key)]
    row += [
      _format_stat(key, summarize(_finals(runs, key)))
      for runs in sweep.values()
    ]
    rows.append(row)
  return _table(header, rows)


# Findings.


def _phrase(label: str, c: Comparison) -> str:
  """'<label> is worse by 0.120 (0.700 against 0.820, noise 0.028)'."""
  if c.verdict == NO_DATA:
    return f'{label} has no data on one side'
  detail = (
    f'{c.ablation.mean:.3f} against {c.baseline.mean:.3f}, noise {c.noise:.3f}'
  )
  if c.verdict == WITHIN_NOISE:
    return f'{label} is within noise ({c.delta:+.3f}: {detail})'
  return f'{label} is {c.verdict} by {abs(c.delta):.3f} ({detail})'


def _moved(c: Comparison | None) -> int:
  """+1 better, -1 worse, 0 within noise or unknown."""
  if c is None:
    return 0
  return {BETTER: 1, WORSE: -1}.get(c.verdict, 0)


def _directions(shape: Comparison | None, color: Comparison | None) -> str:
  """How shape and color accuracy moved together on one benchmark."""
  s, c = _moved(shape), _moved(color)
  if s and c and s != c:
    return 'Shape and color moved in opposite directions.'
  if s and c:
    return f'Shape and color both got {"better" if s > 0 else "worse"}.'
  if s:
    return 'Only shape moved beyond noise.'
  if c:
    return 'Only color moved beyond noise.'
  return 'Neither moved beyond noise.'


@dataclasses.dataclass
class AblationFindings:
  """Every comparison of one ablation against the baseline.

  Attributes:
    variant: the ablation.
    accuracy: (benchmark, head) -> comparison of `<head>_acc`.
    other: metric key -> comparison (shape bias, neither, CZSL).
  """

  variant: str
  accuracy: dict[tuple[str, str], Comparison]
  other: dict[str, Comparison]

  def opposite(self) -> list[str]:
    """Benchmarks where shape and color moved in opposite directions."""
    names = dict.fromkeys(b for b, _ in self.accuracy)
    return [
      b
      for b in names
      if _moved(self.accuracy.get((b, 'shape')))
      * _moved(self.accuracy.get((b, 'color')))
      < 0
    ]

  def counts(self) -> dict[str, int]:
    counts = {BETTER: 0, WORSE: 0, WITHIN_NOISE: 0, NO_DATA: 0}
    for c in self.accuracy.values():
      counts[c.verdict] += 1
    return counts


def ablation_findings(
  baseline: dict[int, RunRecord], variant: str, runs: dict[int, RunRecord]
) -> AblationFindings:
  """Compares every final benchmark metric of `runs` with the baseline's."""
  keys = {
    k
    for r in [*_finished(baseline), *_finished(runs)]
    for k in r.final_scalars()
  }
  accuracy = {}
  for name in benchmarks_in(keys):
    for head in HEADS:
      key = f'eval/{name}/{head}_acc'
      if key in keys:
        accuracy[(name, head)] = compare(
          _finals(baseline, key), _finals(runs, key)
        )
  other = {}
  for key, better in [
    (SHAPE_BIAS, None),
    (NEITHER, None),
    *((f'eval/czsl/{s}', b) for s, _, b in CZSL),
  ]:
    if key in keys:
      other[key] = compare(_finals(baseline, key), _finals(runs, key), better)
  return AblationFindings(variant, accuracy, other)


def _ablation_section(
  findings: AblationFindings,
  baseline_runs: dict[int, RunRecord],
  runs: dict[int, RunRecord],
) -> list[str]:
  f = findings
  lines = [f'### `{f.variant}` against `{BASELINE}`', '']
  n_a, n_b = len(_finished(runs)), len(_finished(baseline_runs))
  if not n_a or not n_b:
    side = f.variant if not n_a else BASELINE
    lines += [f'`{side}` has no finished seed yet: no comparison.', '']
    return lines
  counts = f.counts()
  total = sum(counts.values())
  opposite = f.opposite()
  lines.append(
    f'Finished seeds: {n_a} against {n_b}. Of '
    f'{total} {"accuracy" if total == 1 else "accuracies"} (shape and color, '
    f"every benchmark), {counts[BETTER]} better than the baseline's, "
    f'{counts[WORSE]} worse and {counts[WITHIN_NOISE]} within noise. '
    + (
      'Shape and color moved in opposite directions on '
      + ', '.join(f'`{b}`' for b in opposite)
      + '.'
      if opposite
      else 'Shape and color moved in opposite directions on no benchmark.'
    )
  )
  lines.append('')
  names = list(dict.fromkeys(b for b, _ in f.accuracy))
  for name in names:
    shape = f.accuracy.get((name, 'shape'))
    color = f.accuracy.get((name, 'color'))
    parts = [
      _phrase(f'{head} accuracy', c)
      for head, c in (('shape', shape), ('color', color))
      if c is not None
    ]
    text = f'- `{name}`: ' + '; '.join(parts) + '.'
    if shape is not None and color is not None:
      text += ' ' + _directions(shape, color)
    if name == 'cue_conflict' and SHAPE_BIAS in f.other:
      text += ' ' + _shape_bias_sentence(f.other[SHAPE_BIAS])
    if name == 'cue_conflict' and NEITHER in f.other:
      text += (
        ' '
        + _phrase(
          'The fraction of decisions that follow neither cue', f.other[NEITHER]
        )
        + '.'
      )
    lines.append(text)
  if SHAPE_BIAS in f.other and 'cue_conflict' not in names:
    lines.append('- ' + _shape_bias_sentence(f.other[SHAPE_BIAS]))
  czsl = [
    _phrase(label, f.other[f'eval/czsl/{s}'])
    for s, label, _ in CZSL
    if f'eval/czsl/{s}' in f.other
  ]
  if czsl:
    lines.append('- Zero-shot pairs (CZSL): ' + '; '.join(czsl) + '.')
  lines.append('')
  return lines


def _shape_bias_sentence(c: Comparison) -> str:
  text = _phrase('Shape bias', c) + '.'
  if c.verdict == HIGHER:
    text += (
      ' Among decisions that follow one cue, more follow shape than in the'
      ' baseline.'
    )
  elif c.verdict == LOWER:
    text += (
      ' Among decisions that follow one cue, more follow color than in the'
      ' baseline.'
    )
  return text


def _baseline_section(runs: dict[int, RunRecord]) -> list[str]:
  """What the baseline itself reached: where each cue is weakest."""
  lines = [f'### `{BASELINE}`', '']
  finished = _finished(runs)
  if not finished:
    return lines + ['The baseline has no finished seed yet.', '']
  keys = {k for r in finished for k in r.final_scalars()}

  def mean(key: str) -> float:
    return summarize(_finals(runs, key)).mean

  for head in HEADS:
    scores = {
      name: mean(f'eval/{name}/{head}_acc')
      for name in benchmarks_in(keys)
      if f'eval/{name}/{head}_acc' in keys
    }
    scores = {k: v for k, v in scores.items() if math.isfinite(v)}
    if not scores:
      continue
    best = max(scores, key=scores.get)
    worst = min(scores, key=scores.get)
    if scores[best] - scores[worst] < 5e-4:
      text = (
        f'- {head.capitalize()} accuracy is {scores[best]:.3f} on every '
        'benchmark.'
      )
    else:
      text = (
        f'- {head.capitalize()} accuracy is highest on `{best}` '
        f'({scores[best]:.3f}) and lowest on `{worst}` '
        f'({scores[worst]:.3f}).'
      )
    if 'iid' in scores and 'unseen_pairs' in scores:
      gap = scores['iid'] - scores['unseen_pairs']
      if abs(gap) >= 5e-4:
        text += (
          f' On unseen pairs it is {abs(gap):.3f} '
          f'{"lower" if gap > 0 else "higher"} than on seen pairs (`iid`).'
        )
    lines.append(text)
  bias = mean(SHAPE_BIAS) if SHAPE_BIAS in keys else math.nan
  if math.isfinite(bias):
    lean = 'shape' if bias > 0.5 else 'color' if bias < 0.5 else 'neither cue'
    lines.append(
      f'- Shape bias on cue conflict is {bias:.3f}: among decisions that '
      'follow one cue, '
      + (
        f'more follow {lean}.'
        if lean != 'neither cue'
        else 'as many follow shape as color.'
      )
    )
  czsl = [
    f'{label} {mean(f"eval/czsl/{s}"):.3f}'
    for s, label, _ in CZSL
    if f'eval/czsl/{s}' in keys
  ]
  if czsl:
    lines.append('- Zero-shot pairs (CZSL): ' + '; '.join(czsl) + '.')
  lines.append('')
  return lines


def _noise_rule() -> str:
  return (
    'A difference is *within noise* when the difference of the means over '
    f'finished seeds is at most {NOISE_STANDARD_ERRORS:g} standard errors '
    'of that difference, sqrt(s_b^2/n_b + s_a^2/n_a) with sample standard '
    f'deviations s over n seeds, and never less than {NOISE_FLOOR:g}; when '
    'either side has a single finished seed, the threshold is a fixed '
    f"{ONE_SEED_TOLERANCE:g}. Each comparison below gives the ablation's "
    'mean, the baseline\'s mean and that threshold ("noise"). Accuracies '
    'and CZSL metrics are better when higher; shape bias, the fraction '
    'following neither cue and the calibration bias are only higher or '
    'lower.'
  )


# The report.


def _unfinished_lines(sweep: Sweep) -> list[str]:
  runs = [r for rs in sweep.values() for r in rs.values()]
  unfinished = [r for r in runs if not r.finished]
  if not unfinished:
    return [f'All {len(runs)} runs have finished.']
  items = []
  for r in unfinished:
    total = r.config.get('total_steps')
    of = f' of {total}' if total else ''
    items.append(
      f'`{r.variant}/seed_{r.seed}` (last logged step {r.last_step}{of})'
    )
  return [
    f'{len(runs) - len(unfinished)} of {len(runs)} runs have finished. '
    f'Unfinished (no `summary.json`): {", ".join(items)}. Their curves are '
    'in the figures; they are left out of `results.csv`, the final metrics '
    'and the findings.'
  ]


def write_report(workdir: str) -> str:
  """Writes the sweep's report into `<workdir>/report/`.

  Args:
    workdir: a sweep directory of `<variant>/seed_<n>/` runs.

  Returns:
    The path of `report.md`.

  Raises:
    FileNotFoundError: `workdir` is not a directory.
    ValueError: `workdir` holds no run.
  """
  sweep = load_sweep(workdir)
  if not sweep:
    raise ValueError(
      f'{workdir!r} holds no runs: expected <variant>/seed_<n>/ directories '
      'with config.json and metrics.jsonl.'
    )
  out = os.path.join(workdir, REPORT_DIR)
  os.makedirs(out, exist_ok=True)
  baseline = sweep.get(BASELINE)
  ablations = [v for v in sweep if v != BASELINE]

  md = [f'# Report: `{os.path.basename(os.path.abspath(workdir))}`', '']
  md.append(
    f'Drawn by `scfail.report` from the logs of {len(sweep)} '
    f'variant{"s" if len(sweep) != 1 else ""}: '
    + ', '.join(f'`{v}` ({_seeds_phrase(rs)})' for v, rs in sweep.items())
    + '. Redraw it with `python -m scfail.report '
    f'--workdir={workdir}`.'
  )
  md += [''] + _unfinished_lines(sweep) + ['']
  if baseline is None:
    md += [
      f'No variant is named `{BASELINE}`: there is no Figure 1 and no '
      'comparison.',
      '',
    ]

  if baseline is not None:
    figure_baseline(baseline, os.path.join(out, 'figure_1_baseline.png'))
    md += [
      '## Figure 1: the baseline over training',
      '',
      '![Figure 1](figure_1_baseline.png)',
      '',
      f'Shape-centric (left, solid) and color-centric (right, dashed) '
      f'accuracy of `{BASELINE}` on each benchmark, evaluated during '
      f'training; line: mean over {_seeds_phrase(baseline)}, band: minimum '
      'to maximum over seeds.',
      '',
    ]

  md += ['## Hyperparameters', '', hyperparameter_table(sweep), '']
  differences = config_differences(sweep)
  if differences:
    md += [f'Config fields that differ from `{BASELINE}` (seed aside):', '']
    for variant, diffs in differences.items():
      md.append(f'- `{variant}`: ' + ('; '.join(diffs) or 'none'))
    md.append('')

  write_results_csv(sweep, os.path.join(out, 'results.csv'))
  md += [
    '## Final metrics',
    '',
    'Mean ± sample standard deviation over finished seeds; per-run values '
    'are in [results.csv](results.csv).',
    '',
    final_table(sweep),
    '',
  ]

  md += ['## Findings', '', _noise_rule(), '']
  if baseline is not None:
    md += _baseline_section(baseline)
    for variant in ablations:
      findings = ablation_findings(baseline, variant, sweep[variant])
      md += _ablation_section(findings, baseline, sweep[variant])

  if ablations:
    md += ['## Appendix: each ablation against the baseline', '']
  for variant in ablations:
    name = f'figure_appendix_{variant}.png'
    figure_appendix(variant, sweep[variant], baseline, os.path.join(out, name))
    md += [f'### `{variant}`', '', f'![{variant}]({name})', '']

  path = os.path.join(out, 'report.md')
  with open(path, 'w') as f:
    f.write('\n'.join(md).rstrip() + '\n')
  logging.info('Wrote the report to %s.', path)
  return path


def _main(argv: list[str]) -> None:
  from absl import app

  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  print(write_report(_WORKDIR.value))


if __name__ == '__main__':
  from absl import app, flags

  # Defined only when run as a program: scfail.main defines its own
  # --workdir and imports this module.
  _WORKDIR = flags.DEFINE_string(
    'workdir', None, 'The sweep directory whose report to draw.'
  )
  flags.mark_flag_as_required('workdir')
  app.run(_main)
