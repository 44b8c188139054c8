"""Pictures of the study: samples, mistakes, curves, confusions, CZSL.

Everything a notebook shows is drawn here, so that notebooks stay a few
calls long:

- `sample_grid`: images with their true shape and color; where predictions
  are given, a red frame marks each image with a wrong scored attribute and
  the wrong prediction is written under it.
- `benchmark_grids`: one such grid per benchmark, of the examples the
  evaluation scores, written as `<out_dir>/samples_<benchmark>.png`.
- `predict_fn_from_run` (and `restore_run`): a finished (or running) run's
  newest checkpoint as a jitted function from images to predicted shapes
  and colors; `mistake_grids`: the images it gets wrong, per benchmark.
- `learning_curves` and `LiveCurves`: curves from `metrics.jsonl`, also
  while a run is still writing it.
- `confusion_figure`: the `iid` confusion matrices of `summary.json`.
- `czsl_operating_points`, `czsl_points_from_run` and `czsl_curve_figure`:
  seen and unseen pair accuracy over the calibration bias of the
  compositional zero-shot metrics.
- `comparison_table`: the final metrics of several runs as a Markdown table.
- `show` and `show_markdown`: display a figure, a PNG or a report in a
  notebook.

Figures are `matplotlib.figure.Figure` objects with an Agg canvas: neither
pyplot's global state nor a notebook's backend is touched. TensorFlow, JAX
and Orbax are imported only by the functions that read datasets or
checkpoints, so that drawing from logs stays light.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import io
import json
import math
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from scfail import benchmarks, render
from scfail.evaluate import CzslCurve, czsl_operating_points

PredictFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
LogProbFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

# What each benchmark changes, for figure titles; a benchmark missing here
# is titled by its name alone.
WHAT_CHANGES = {
  'iid': 'held-out images of seen pairs',
  'unseen_pairs': 'pairs never seen in training',
  'texture': 'objects carry stripes, checks or dots',
  'lighting': 'global brightness and color cast',
  'scale': 'objects smaller or larger than in training',
  'background': 'cluttered, colored backgrounds',
  'grayscale': 'color removed (color is not scored)',
  'cue_conflict': 'the color is diagnostic of another shape',
}
DEFAULT_CURVES = ('train/loss', 'eval/*/shape_acc', 'eval/*/color_acc')
MISTAKE_COLOR = 'tab:red'
_PNG_DPI = 110
_PREDICT_CHUNK = 256


def _new_figure(width: float, height: float) -> Figure:
  fig = Figure(figsize=(width, height), layout='constrained')
  FigureCanvasAgg(fig)
  return fig


def save(fig: Figure, path: str) -> str:
  """Writes `fig` as a PNG at `path` (directories made) and returns `path`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=_PNG_DPI)
  return path


def png_bytes(fig: Figure) -> bytes:
  """The PNG encoding of `fig`."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=_PNG_DPI)
  return buffer.getvalue()


def show(fig_or_path: Figure | str) -> None:
  """Displays a figure or a PNG file in a notebook (IPython) as an image."""
  from IPython.display import Image, display

  if isinstance(fig_or_path, str):
    display(Image(filename=fig_or_path))
  else:
    display(Image(data=png_bytes(fig_or_path)))


def show_markdown(path: str) -> None:
  """Displays a Markdown file in a notebook, its local images in place.

  A notebook resolves image links against its own folder; this shows each
  `![...](file.png)` of `path` from the file's folder instead.
  """
  from IPython.display import Image, Markdown, display

  with open(path) as f:
    text = f.read()
  folder = os.path.dirname(path)
  position = 0
  for link in re.finditer(r'!\[[^\]]*\]\(([^)\s]+)\)', text):
    display(Markdown(text[position : link.start()]))
    image = os.path.join(folder, link[1])
    display(Image(filename=image) if os.path.exists(image) else link[0])
    position = link.end()
  display(Markdown(text[position:]))


# Sample grids.


def mistake_mask(
  shapes: np.ndarray,
  colors: np.ndarray,
  predicted_shapes: np.ndarray | None = None,
  predicted_colors: np.ndarray | None = None,
) -> np.ndarray:
  """Boolean [n]: True where a given prediction differs from its label.

  An attribute without predictions (None) is not scored and never makes a
  mistake; with neither given, nothing is a mistake.
  """
  wrong = np.zeros(np.shape(shapes), bool)
  if predicted_shapes is not None:
    wrong |= np.asarray(predicted_shapes) != np.asarray(shapes)
  if predicted_colors is not None:
    wrong |= np.asarray(predicted_colors) != np.asarray(colors)
  return wrong


def _check_length(n: int, **arrays: Sequence | np.ndarray | None) -> None:
  for name, array in arrays.items():
    if array is not None and len(array) != n:
      raise ValueError(
        f'{name} has {len(array)} entries but there are {n} images.'
      )


def sample_grid(
  images: np.ndarray,
  shapes: np.ndarray,
  colors: np.ndarray,
  shape_names: Sequence[str],
  color_names: Sequence[str],
  predicted_shapes: np.ndarray | None = None,
  predicted_colors: np.ndarray | None = None,
  title: str = 'Samples',
  columns: int = 8,
  notes: Sequence[str] | None = None,
  count: bool = True,
) -> Figure:
  """A grid of images, each titled with its true shape and color.

  Where predictions are given, each image with a wrong prediction (see
  `mistake_mask`) gets a red frame and the wrong predicted attribute(s)
  written under it in red.

  Args:
    images: uint8 [n, height, width, 3].
    shapes: int [n], the true shapes, indices into `shape_names`.
    colors: int [n], the true colors, indices into `color_names`.
    shape_names: the name of each shape class.
    color_names: the name of each color class.
    predicted_shapes: int [n] or None (shape not scored).
    predicted_colors: int [n] or None (color not scored).
    title: the figure's title.
    columns: images per row at most.
    notes: a third line of text over each image, or None.
    count: whether the title counts the mistakes, when there are
      predictions.

  Returns:
    A figure with exactly one axes per image, in order.
  """
  images = np.asarray(images)
  n = len(images)
  if n == 0:
    raise ValueError('sample_grid needs at least one image.')
  _check_length(
    n,
    shapes=shapes,
    colors=colors,
    predicted_shapes=predicted_shapes,
    predicted_colors=predicted_colors,
    notes=notes,
  )
  wrong = mistake_mask(shapes, colors, predicted_shapes, predicted_colors)
  predicted = predicted_shapes is not None or predicted_colors is not None
  if predicted:
    counted = f'{int(wrong.sum())} of {n} wrong ' if count else ''
    title += (
      f'\n{counted}(red frame; the wrong answer is written under the image)'
    )
  columns = max(1, min(columns, n))
  rows = math.ceil(n / columns)
  # A fixed layout, in inches: images keep their aspect, and every label
  # line has its room whatever the backend.
  cell, side = 1.35, 1.15
  above = 0.14 * (2 + (notes is not None)) + 0.08
  below = 0.22 if predicted else 0.06
  row = above + side + below
  header = 0.18 * (title.count('\n') + 1) + 0.15
  width, height = cell * columns + 0.1, row * rows + header
  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)
  for i in range(n):
    r, c = divmod(i, columns)
    left = 0.05 + c * cell + (cell - side) / 2
    bottom = height - header - r * row - above - side
    ax = fig.add_axes(
      (left / width, bottom / height, side / width, side / height)
    )
    ax.imshow(images[i], interpolation='nearest')
    ax.set_xticks([])
    ax.set_yticks([])
    label = f'{shape_names[shapes[i]]}\n{color_names[colors[i]]}'
    if notes is not None:
      label += f'\n{notes[i]}'
    ax.set_title(label, fontsize=8)
    for spine in ax.spines.values():
      spine.set_visible(bool(wrong[i]))
      spine.set_edgecolor(MISTAKE_COLOR)
      spine.set_linewidth(3.0)
    if wrong[i]:
      said = []
      if predicted_shapes is not None and predicted_shapes[i] != shapes[i]:
        said.append(shape_names[predicted_shapes[i]])
      if predicted_colors is not None and predicted_colors[i] != colors[i]:
        said.append(color_names[predicted_colors[i]])
      ax.set_xlabel('said ' + ', '.join(said), color=MISTAKE_COLOR, fontsize=8)
  fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va='top')
  return fig


def benchmark_examples(
  benchmark: benchmarks.Benchmark,
  split: dict[str, np.ndarray],
  seen: np.ndarray,
  max_examples: int | None = None,
) -> dict[str, np.ndarray]:
  """The examples evaluation scores on `benchmark`, in the order it reads.

  Selected by `scfail.input_pipeline.eval_set`, as the evaluation selects
  them on one process: `max_examples` keeps the first ones, as
  `config.eval_max_examples` does.

  Returns:
    `image`, `shape` and `color` arrays of the real (unpadded) examples.
  """
  from scfail import input_pipeline

  examples = input_pipeline.eval_set(
    benchmark, split, seen, 512, max_examples=max_examples
  )
  keep = np.concatenate([b['mask'] for b in examples.batches]) > 0
  return {
    key: np.concatenate([b[key] for b in examples.batches])[keep]
    for key in ('image', 'shape', 'color')
  }


def _describe(name: str) -> str:
  return f'{name}: {WHAT_CHANGES[name]}' if name in WHAT_CHANGES else name


def benchmark_grids(
  data_dir: str | None,
  dataset: str = 'scfail_shapes/tiny',
  *,
  out_dir: str,
  per_benchmark: int = 16,
  seen: np.ndarray | None = None,
  predict_fn: PredictFn | None = None,
  mistakes_only: bool = False,
  max_examples: int | None = None,
  names: Sequence[str] | None = None,
) -> dict[str, str]:
  """Writes a sample grid per benchmark, `<out_dir>/samples_<name>.png`.

  Examples are those the evaluation scores (`benchmark_examples`), with
  the hold-out `benchmarks.holdout(num_shapes, num_colors, 2)` unless
  `seen` is given. The dataset is built first if it is `scfail_shapes` and
  missing.

  Args:
    data_dir: the TFDS data directory; None or '' for TFDS's default.
    dataset: the TFDS name, e.g. 'scfail_shapes/tiny'.
    out_dir: where the PNGs go (made if missing).
    per_benchmark: images per grid at most.
    seen: boolean [num_shapes, num_colors], True where a pair is seen.
    predict_fn: images uint8 [n, h, w, 3] -> (predicted shapes, predicted
      colors); when given, mistakes on the attributes a benchmark scores
      are marked.
    mistakes_only: draw only examples the model gets wrong (needs
      `predict_fn`); the title says how many of the scored examples are.
    max_examples: score at most this many examples per benchmark, the
      first ones, as `config.eval_max_examples` does.
    names: the benchmarks to draw; by default every benchmark of
      `benchmarks.BENCHMARKS` whose split the dataset has.

  Returns:
    Benchmark name -> path of its PNG, in the order of `names`.
  """
  from scfail import data

  if mistakes_only and predict_fn is None:
    raise ValueError('mistakes_only=True needs a predict_fn.')
  builder = data.get_builder(dataset, data_dir or None)
  spec = data.dataset_spec(builder)
  if seen is None:
    seen = benchmarks.holdout(spec.num_shapes, spec.num_colors, 2)
  if names is None:
    names = [
      name
      for name, b in benchmarks.BENCHMARKS.items()
      if b.split in spec.splits
    ]
  unknown = [n for n in names if n not in benchmarks.BENCHMARKS]
  if unknown:
    raise ValueError(
      f'Unknown benchmarks {unknown}; choose from '
      f'{", ".join(benchmarks.BENCHMARKS)}.'
    )

  splits: dict[str, dict[str, np.ndarray]] = {}
  paths = {}
  for name in names:
    benchmark = benchmarks.BENCHMARKS[name]
    if benchmark.split not in splits:
      splits[benchmark.split] = data.load_study_split(
        builder, spec, benchmark.split
      )
    examples = benchmark_examples(
      benchmark, splits[benchmark.split], seen, max_examples
    )
    if not mistakes_only:
      examples = {k: v[:per_benchmark] for k, v in examples.items()}
    title = _describe(name)
    predicted_shapes = predicted_colors = None
    if predict_fn is not None:
      predicted_shapes, predicted_colors = predict_fn(examples['image'])
      if 'shape' not in benchmark.scores:
        predicted_shapes = None
      if 'color' not in benchmark.scores:
        predicted_colors = None
    if mistakes_only:
      wrong = mistake_mask(
        examples['shape'],
        examples['color'],
        predicted_shapes,
        predicted_colors,
      )
      title += (
        f'\nthe first {min(per_benchmark, int(wrong.sum()))} of '
        f'{int(wrong.sum())} mistakes among {wrong.size} scored examples'
      )
      if not wrong.any():
        title += ': none to draw'
        wrong[:1] = True  # Show one example so that the file exists.
      keep = np.nonzero(wrong)[0][:per_benchmark]
      examples = {k: v[keep] for k, v in examples.items()}
      if predicted_shapes is not None:
        predicted_shapes = predicted_shapes[keep]
      if predicted_colors is not None:
        predicted_colors = predicted_colors[keep]
    notes = None
    if benchmark.pairs == 'conflict':
      cue = benchmarks.conflict_shape(
        examples['color'], spec.num_shapes, spec.num_colors
      )
      notes = [f'(color of {spec.shape_names[c]})' for c in cue]
    fig = sample_grid(
      examples['image'],
      examples['shape'],
      examples['color'],
      spec.shape_names,
      spec.color_names,
      predicted_shapes,
      predicted_colors,
      title=title,
      notes=notes,
      count=not mistakes_only,
    )
    paths[name] = save(fig, os.path.join(out_dir, f'samples_{name}.png'))
  return paths


# A run's checkpoint as a function.


@dataclasses.dataclass
class RestoredRun:
  """A run's config, dataset description, model and restored parameters.

  Attributes:
    run_dir: the run directory.
    config: its `config.json` as a ConfigDict.
    spec: its dataset's `scfail.data.DatasetSpec`.
    model: the Flax model the config describes.
    params: the parameters of the newest checkpoint, on one device.
    step: the step of that checkpoint.
  """

  run_dir: str
  config: Any
  spec: Any
  model: Any
  params: Any
  step: int

  def log_prob_fn(self, chunk: int = _PREDICT_CHUNK) -> LogProbFn:
    """Images uint8 [n, h, w, 3] -> (shape log-probs, color log-probs).

    Images go through in chunks of `chunk`, the last one padded, so that
    one compilation serves every call.
    """
    import jax

    from scfail import train as train_lib

    outputs = jax.jit(
      lambda params, images: train_lib.eval_outputs(
        params, {'image': images}, model=self.model
      )
    )

    def log_probs(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
      images = np.asarray(images)
      shape_parts, color_parts = [], []
      for start in range(0, len(images), chunk):
        part = images[start : start + chunk]
        padded = np.zeros((chunk,) + part.shape[1:], part.dtype)
        padded[: len(part)] = part
        out = jax.device_get(outputs(self.params, padded))
        shape_parts.append(np.asarray(out['shape_logp'])[: len(part)])
        color_parts.append(np.asarray(out['color_logp'])[: len(part)])
      if not shape_parts:
        return (
          np.zeros((0, self.spec.num_shapes), np.float32),
          np.zeros((0, self.spec.num_colors), np.float32),
        )
      return np.concatenate(shape_parts), np.concatenate(color_parts)

    return log_probs

  def predict_fn(self, chunk: int = _PREDICT_CHUNK) -> PredictFn:
    """Images uint8 [n, h, w, 3] -> (predicted shapes, predicted colors)."""
    log_probs = self.log_prob_fn(chunk)

    def predict(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
      shape_logp, color_logp = log_probs(images)
      return shape_logp.argmax(-1), color_logp.argmax(-1)

    return predict


def restore_run(run_dir: str) -> RestoredRun:
  """Loads a run's config.json and restores its newest Orbax checkpoint.

  The train state is rebuilt abstractly from the config (model, freezing
  labels, optimizer), as `scfail.experiment.run` builds it, and restored
  onto the first device; nothing is initialised for real.

  Raises:
    FileNotFoundError: `run_dir` has no config.json or no checkpoint.
  """
  import jax
  import ml_collections
  import orbax.checkpoint as ocp
  import tensorflow_datasets as tfds

  from scfail import data  # noqa: F401  (registers scfail_shapes)
  from scfail import train as train_lib

  config_path = os.path.join(run_dir, 'config.json')
  if not os.path.exists(config_path):
    raise FileNotFoundError(
      f'{run_dir!r} has no config.json: is it a run directory of scfail?'
    )
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  # The dataset's description comes from its builder's code: its files are
  # not needed to predict.
  builder = tfds.builder(
    config.dataset,
    data_dir=data.data_dir_or_default(config.get('data_dir') or None),
  )
  spec = data.dataset_spec(builder)
  model = train_lib.build_model(config, spec.num_shapes, spec.num_colors)

  def abstract_state():
    params = train_lib.init_params(model, config.seed, config.image_size)
    labels = train_lib.freeze_labels(params, config.freeze)
    optimizer = train_lib.make_optimizer(config, labels)
    return train_lib.create_train_state(params, optimizer)

  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
    jax.eval_shape(abstract_state),
  )
  directory = os.path.abspath(os.path.join(run_dir, 'checkpoints'))
  manager = ocp.CheckpointManager(directory)
  try:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(
        f'{run_dir!r} holds no checkpoint yet (looked in {directory}).'
      )
    state = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  finally:
    manager.close()
  return RestoredRun(run_dir, config, spec, model, state.params, int(step))


def predict_fn_from_run(run_dir: str) -> PredictFn:
  """A run's newest checkpoint as images -> (shape, color) predictions.

  Args:
    run_dir: a run directory with config.json and checkpoints/.

  Returns:
    A function from uint8 images [n, h, w, 3] to int arrays [n] of
    predicted shapes and colors; jitted, on the first device.
  """
  return restore_run(run_dir).predict_fn()


def mistake_grids(
  run_dir: str,
  out_dir: str,
  per_benchmark: int = 16,
  data_dir: str | None = None,
  max_examples: int | None = None,
) -> dict[str, str]:
  """Grids of the images a run gets wrong, one PNG per benchmark it scores.

  The run's newest checkpoint predicts the examples its evaluation scores
  (its hold-out and `eval_max_examples`); each grid draws the first
  `per_benchmark` mistakes, `<out_dir>/samples_<benchmark>.png`.

  Args:
    run_dir: a run directory with config.json and checkpoints/.
    out_dir: where the PNGs go.
    per_benchmark: images per grid at most.
    data_dir: the TFDS data directory; by default the run's.
    max_examples: examples scored per benchmark; by default the run's
      `eval_max_examples`; 0 for all.

  Returns:
    Benchmark name -> path of its PNG.
  """
  restored = restore_run(run_dir)
  config = restored.config
  seen = benchmarks.holdout(
    restored.spec.num_shapes,
    restored.spec.num_colors,
    config.unseen_pairs_per_attribute,
  )
  if max_examples is None:
    max_examples = config.get('eval_max_examples', 0)
  return benchmark_grids(
    data_dir or config.get('data_dir') or None,
    config.dataset,
    out_dir=out_dir,
    per_benchmark=per_benchmark,
    seen=seen,
    predict_fn=restored.predict_fn(),
    mistakes_only=True,
    max_examples=max_examples or None,
    names=list(config.benchmarks),
  )


# Learning curves.


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
  """The lines of a run's metrics.jsonl; [] while there is none.

  Lines that are not JSON (a line being written, a run killed while
  writing) are skipped, so that this can be called while a run writes.
  """
  path = os.path.join(run_dir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  lines = []
  with open(path) as f:
    for text in f:
      try:
        line = json.loads(text)
      except json.JSONDecodeError:
        continue
      if isinstance(line, dict) and 'step' in line:
        lines.append(line)
  return lines


def curve(
  metrics: Sequence[Mapping[str, Any]], key: str
) -> tuple[np.ndarray, np.ndarray]:
  """Steps and values of `key`; a step logged twice keeps its last value."""
  points: dict[int, float] = {}
  for line in metrics:
    value = line.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
      points[int(line['step'])] = float(value)
  steps = sorted(points)
  return np.asarray(steps, np.int64), np.asarray(
    [points[s] for s in steps], np.float64
  )


def _key_rank(key: str) -> tuple[int, int, str]:
  """Benchmarks in the study's order; shape before color."""
  parts = key.split('/')
  order = list(benchmarks.BENCHMARKS)
  bench = order.index(parts[1]) if len(parts) > 2 and parts[1] in order else -1
  head = next((i for i, h in enumerate(('shape', 'color')) if h in key), 2)
  return (bench if bench >= 0 else len(order)), head, key


def _matched_part(pattern: str, key: str) -> str:
  """What the one `*` of `pattern` stands for in `key`; else `key`."""
  if pattern.count('*') != 1 or any(ch in pattern for ch in '?['):
    return key
  prefix, suffix = pattern.split('*')
  return key[len(prefix) : len(key) - len(suffix)] or key


def _run_labels(
  run_dir_or_dirs: str | Sequence[str] | Mapping[str, str],
) -> dict[str, str]:
  """Label -> run directory; labels are the last two path components."""
  if isinstance(run_dir_or_dirs, str):
    run_dir_or_dirs = [run_dir_or_dirs]
  if isinstance(run_dir_or_dirs, Mapping):
    return dict(run_dir_or_dirs)
  labels = {}
  for run_dir in run_dir_or_dirs:
    parts = os.path.normpath(os.path.abspath(run_dir)).split(os.sep)
    labels[os.path.join(*parts[-2:])] = run_dir
  return labels


def learning_curves(
  run_dir_or_dirs: str | Sequence[str] | Mapping[str, str],
  keys: Sequence[str] = DEFAULT_CURVES,
  title: str | None = None,
) -> Figure:
  """Draws metrics of one or several runs against the training step.

  One panel per entry of `keys`. An entry may be a pattern
  (`fnmatch`-style, e.g. 'eval/*/shape_acc'): its panel draws every
  logged key it matches. With one run, each matched key has its own color;
  with several, each run has its own color and each matched key of a panel
  its own line style. Reads `metrics.jsonl` afresh on every call, so it
  can be called again while a run writes.

  Args:
    run_dir_or_dirs: a run directory, several, or a mapping label -> run
      directory.
    keys: metric names or patterns, one panel each.
    title: the figure's title; by default, the runs' labels.
  """
  runs = _run_labels(run_dir_or_dirs)
  metrics = {label: read_metrics(d) for label, d in runs.items()}
  logged = {k for lines in metrics.values() for line in lines for k in line}
  columns = min(3, max(1, len(keys)))
  rows = math.ceil(len(keys) / columns)
  fig = _new_figure(5.2 * columns, 3.6 * rows + 0.6)
  axes = np.asarray(fig.subplots(rows, columns, squeeze=False)).ravel()
  run_colors = colormaps['tab10']
  styles = ('-', '--', ':', '-.')
  for ax, pattern in zip(axes, keys, strict=False):
    matched = sorted(
      (k for k in logged if fnmatch.fnmatchcase(k, pattern)), key=_key_rank
    )
    key_colors = colormaps['tab10' if len(matched) <= 10 else 'tab20']
    for r, (label, lines) in enumerate(metrics.items()):
      for j, key in enumerate(matched):
        steps, values = curve(lines, key)
        if not steps.size:
          continue
        short = _matched_part(pattern, key)
        if len(runs) == 1:
          color, style, name = key_colors(j % key_colors.N), '-', short
        else:
          color = run_colors(r % 10)
          style = styles[j % len(styles)]
          name = f'{label}: {short}' if len(matched) > 1 else label
        ax.plot(
          steps, values, style, color=color, label=name, marker='o', ms=2.5
        )
    ax.set_title(pattern, fontsize=10)
    ax.set_xlabel('training step')
    ax.grid(alpha=0.3)
    if pattern.endswith(('_acc', 'shape_bias', 'best_hm', 'auc')):
      ax.set_ylim(-0.02, 1.02)
    if ax.lines:
      ax.legend(fontsize='x-small', loc='best')
    else:
      ax.text(
        0.5,
        0.5,
        'nothing logged yet',
        ha='center',
        va='center',
        transform=ax.transAxes,
      )
  for ax in axes[len(keys) :]:
    ax.set_axis_off()
  fig.suptitle(title or ', '.join(runs), fontsize=11)
  return fig


class LiveCurves:
  """Redraws `learning_curves` in a notebook while a run trains.

  Use it around a training call in a notebook cell:

    with visualize.LiveCurves(run_dir):
      experiment.run(config, run_dir)

  A background thread redraws the curves every `every_seconds` from
  `metrics.jsonl`; the final curves are drawn on leaving the block, also
  when training raised.
  """

  def __init__(
    self,
    run_dir_or_dirs: str | Sequence[str] | Mapping[str, str],
    keys: Sequence[str] = DEFAULT_CURVES,
    every_seconds: float = 10.0,
  ):
    self.runs = run_dir_or_dirs
    self.keys = keys
    self.every_seconds = every_seconds
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._handle = None

  def _image(self):
    from IPython.display import Image

    return Image(data=png_bytes(learning_curves(self.runs, self.keys)))

  def _loop(self) -> None:
    while not self._stop.wait(self.every_seconds):
      self._handle.update(self._image())

  def __enter__(self) -> LiveCurves:
    from IPython.display import display

    self._handle = display(self._image(), display_id=True)
    self._thread = threading.Thread(target=self._loop, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc_info) -> None:
    self._stop.set()
    self._thread.join()
    self._handle.update(self._image())


# Confusion matrices.


def _class_names(config: Mapping[str, Any], head: str, k: int) -> list[str]:
  dataset = str(config.get('dataset', ''))
  names = render.SHAPES if head == 'shape' else render.COLORS
  if dataset.startswith('scfail_shapes') and len(names) == k:
    return list(names)
  return [str(i) for i in range(k)]


def confusion_figure(
  summary_json_path: str,
  shape_names: Sequence[str] | None = None,
  color_names: Sequence[str] | None = None,
  title: str | None = None,
) -> Figure:
  """Draws `confusion/shape` and `confusion/color` of a summary.json.

  They count `iid` examples by true class (rows) and predicted class
  (columns). Cells are shaded by the fraction of their row and show counts.
  Class names default to those of `scfail_shapes` when the run's
  config.json (next to the summary) names it, and to indices otherwise.
  """
  with open(summary_json_path) as f:
    summary = json.load(f)
  config_path = os.path.join(os.path.dirname(summary_json_path), 'config.json')
  config = {}
  if os.path.exists(config_path):
    with open(config_path) as f:
      config = json.load(f)
  given = {'shape': shape_names, 'color': color_names}
  heads = [h for h in ('shape', 'color') if f'confusion/{h}' in summary]
  if not heads:
    raise ValueError(
      f'{summary_json_path} holds no confusion/shape or confusion/color.'
    )
  fig = _new_figure(6.0 * len(heads), 5.4)
  axes = np.atleast_1d(fig.subplots(1, len(heads)))
  for ax, head in zip(axes, heads, strict=True):
    counts = np.asarray(summary[f'confusion/{head}'], np.int64)
    k = counts.shape[0]
    names = list(given[head] or _class_names(config, head, k))
    rows = counts.sum(1, keepdims=True)
    fraction = counts / np.maximum(rows, 1)
    ax.imshow(fraction, cmap='Blues', vmin=0.0, vmax=1.0)
    for (i, j), count in np.ndenumerate(counts):
      if count:
        ax.text(
          j,
          i,
          str(count),
          ha='center',
          va='center',
          fontsize=7,
          color='white' if fraction[i, j] > 0.5 else 'black',
        )
    ax.set_xticks(range(k), names, rotation=45, ha='right', fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel(f'predicted {head}')
    ax.set_ylabel(f'true {head}')
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f'{head}: accuracy {accuracy:.3f} on {counts.sum()} images')
  fig.suptitle(
    title
    or f'iid confusion matrices of {os.path.dirname(summary_json_path)}'
    ' (shade: fraction of the row)',
    fontsize=10,
  )
  return fig


# Compositional zero-shot operating points.


def czsl_points_from_run(
  run_dir: str,
  data_dir: str | None = None,
  max_examples: int | None = None,
) -> CzslCurve:
  """The CZSL operating points of a run's newest checkpoint.

  Scores the examples the run's evaluation scores for `eval/czsl/*`: every
  pair of the `test` split, the first `config.eval_max_examples` unless
  `max_examples` is given.

  Args:
    run_dir: a run directory with config.json and checkpoints/.
    data_dir: the TFDS data directory; by default the run's.
    max_examples: examples scored at most; 0 for all.
  """
  from scfail import data

  restored = restore_run(run_dir)
  config = restored.config
  builder = data.get_builder(
    config.dataset, data_dir or config.get('data_dir') or None
  )
  seen = benchmarks.holdout(
    restored.spec.num_shapes,
    restored.spec.num_colors,
    config.unseen_pairs_per_attribute,
  )
  if max_examples is None:
    max_examples = config.get('eval_max_examples', 0)
  czsl = benchmarks.Benchmark('czsl', 'test', 'all', ())
  examples = benchmark_examples(
    czsl,
    data.load_study_split(builder, restored.spec, 'test'),
    seen,
    max_examples or None,
  )
  shape_logp, color_logp = restored.log_prob_fn()(examples['image'])
  return czsl_operating_points(
    shape_logp,
    color_logp,
    examples['shape'],
    examples['color'],
    np.ones(len(examples['shape'])),
    seen,
  )


def czsl_curve_figure(
  points: CzslCurve | Mapping[str, CzslCurve], title: str | None = None
) -> Figure:
  """Draws seen and unseen pair accuracy over the calibration bias.

  Left: against the bias added to unseen pairs, seen accuracy, unseen
  accuracy and their harmonic mean (for several runs, the harmonic mean of
  each). Right: unseen against seen accuracy as the bias sweeps, whose area
  is the AUC. The uncalibrated decision (bias 0) is a circle, the best
  harmonic mean a star.

  Args:
    points: one run's operating points, or run label -> operating points.
    title: the figure's title.
  """
  curves = dict(points) if isinstance(points, Mapping) else {'': points}
  fig = _new_figure(12, 4.8)
  left, right = fig.subplots(1, 2)
  run_colors = colormaps['tab10']
  for r, (label, c) in enumerate(curves.items()):
    metrics = c.metrics()
    best, zero = c.best, c.at_bias(0.0)
    edges = np.concatenate([c.bias_low, c.bias_high[-1:]])
    prefix = f'{label}: ' if label else ''
    if len(curves) == 1:
      lines = (
        (c.seen_acc, 'seen pairs', 'tab:blue'),
        (c.unseen_acc, 'unseen pairs', 'tab:orange'),
        (c.harmonic_mean, 'harmonic mean', 'tab:green'),
      )
      color = 'tab:purple'
    else:
      color = run_colors(r % 10)
      lines = ((c.harmonic_mean, f'{prefix}harmonic mean', color),)
    for values, name, line_color in lines:
      # No baseline: the outer bounds are not accuracy drops.
      left.stairs(
        values, edges, color=line_color, lw=1.8, label=name, baseline=None
      )
    hm_color = lines[-1][2]
    left.plot(c.bias[best], c.harmonic_mean[best], '*', color=hm_color, ms=11)
    right.plot(
      c.seen_acc,
      c.unseen_acc,
      '-',
      color=color,
      label=f'{prefix}AUC {metrics["auc"]:.3f}',
    )
    if len(curves) == 1:
      right.fill_between(c.seen_acc, c.unseen_acc, color=color, alpha=0.12)
    for i, marker in ((zero, 'o'), (best, '*')):
      right.plot(c.seen_acc[i], c.unseen_acc[i], marker, color=color, ms=10)
    right.annotate(
      f'best HM {metrics["best_hm"]:.3f}',
      (c.seen_acc[best], c.unseen_acc[best]),
      textcoords='offset points',
      xytext=(6, 6),
      fontsize=8,
      color=color,
    )
  left.axvline(0.0, color='gray', ls=':', lw=1)
  left.set_xlabel('calibration bias added to unseen pairs (nats)')
  left.set_ylabel('pair accuracy')
  left.set_ylim(-0.02, 1.02)
  left.grid(alpha=0.3)
  left.legend(fontsize='small', loc='best')
  left.set_title('over the bias (dotted: no bias; star: best HM)')
  right.set_xlim(-0.02, 1.02)
  right.set_ylim(-0.02, 1.02)
  right.set_xlabel('seen pair accuracy')
  right.set_ylabel('unseen pair accuracy')
  right.grid(alpha=0.3)
  right.legend(fontsize='small', loc='lower left')
  right.set_title('unseen against seen (circle: no bias; star: best HM)')
  fig.suptitle(
    title
    or 'Compositional zero-shot pair classification (HM: harmonic '
    'mean of seen and unseen accuracy)',
    fontsize=11,
  )
  return fig


# Tables.


def comparison_table(
  summaries: Mapping[str, Mapping[str, Any]],
  names: Sequence[str] | None = None,
) -> str:
  """The final metrics of several runs side by side, as Markdown.

  Args:
    summaries: run label -> its summary (what `experiment.run` returns or
      summary.json holds).
    names: the benchmarks to list; all of `benchmarks.BENCHMARKS` if None.

  Returns:
    A table with one row per metric (shape and color accuracy per
    benchmark, cue-conflict shape bias, CZSL AUC and best harmonic mean)
    and one column per run; '-' where a run lacks the metric.
  """
  names = list(benchmarks.BENCHMARKS) if names is None else list(names)
  rows = [
    (f'{b} {h} accuracy', f'eval/{b}/{h}_acc')
    for b in names
    for h in ('shape', 'color')
  ]
  rows += [
    ('cue_conflict shape bias', 'eval/cue_conflict/shape_bias'),
    ('CZSL AUC', 'eval/czsl/auc'),
    ('CZSL best harmonic mean', 'eval/czsl/best_hm'),
  ]
  labels = list(summaries)
  lines = [
    '| metric | ' + ' | '.join(labels) + ' |',
    '|---|' + '---|' * len(labels),
  ]
  for label, key in rows:
    values = [summaries[run].get(key) for run in labels]
    if all(v is None for v in values):
      continue
    cells = [
      '-'
      if not isinstance(v, int | float) or not math.isfinite(v)
      else f'{v:.3f}'
      for v in values
    ]
    lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)
