"""One training run, and a sweep of runs, from a config to a run directory.

`run(config, workdir)` trains one model and writes, in `workdir`:
`config.json`, `metrics.jsonl` (one JSON object a line, with `step`),
TensorBoard events, `checkpoints/` (Orbax) and, once finished,
`summary.json`. A run resumes from its newest readable checkpoint.

`run_sweep(config, workdir)` runs every variant and seed of a sweep config
into `<workdir>/<variant>/seed_<n>/`, skipping finished runs.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import signal
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from scfail import benchmarks, config_lib, data, evaluate, input_pipeline
from scfail import train as train_lib


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite."""


def is_sweep(config: ml_collections.ConfigDict) -> bool:
  return 'variants' in config


def variant_config(
  config: ml_collections.ConfigDict, overrides: dict[str, Any], seed: int
) -> ml_collections.ConfigDict:
  """A single run's config: the sweep's base with a variant's overrides."""
  run_config = copy.deepcopy(config)
  with run_config.unlocked():
    for key in ('variants', 'seeds'):
      if key in run_config:
        del run_config[key]
  _apply_overrides(run_config, overrides, prefix='')
  run_config.seed = seed
  return run_config


def _apply_overrides(node, overrides, prefix: str) -> None:
  """Sets nested `overrides` (dicts of field values) into a ConfigDict."""
  for key, value in overrides.items():
    if key not in node:
      raise config_lib.ConfigError(
        f'Variant override {prefix + key!r} names no config field.'
      )
    if isinstance(value, dict | ml_collections.ConfigDict):
      _apply_overrides(node[key], dict(value), prefix + key + '.')
    else:
      node[key] = value


def _host(x: jax.Array) -> np.ndarray:
  """A global array's full value on every process."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class MetricWriter:
  """Writes metrics.jsonl and TensorBoard events (process 0 alone)."""

  def __init__(self, workdir: str, resume_step: int):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if not self.active:
      return
    # Lines past the checkpoint we resume from are rewritten by this run.
    if os.path.exists(self.path):
      with open(self.path) as f:
        kept = [line for line in f if json.loads(line)['step'] <= resume_step]
      with open(self.path, 'w') as f:
        f.writelines(kept)
    from tensorboardX import SummaryWriter

    self._tb = SummaryWriter(os.path.join(workdir, 'tb'))

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.active:
      return
    record = {'step': int(step)}
    record.update({k: float(v) for k, v in metrics.items()})
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for k, v in metrics.items():
      self._tb.add_scalar(k, float(v), int(step))
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class Progress:
  """A progress bar with images per second and ETA, on terminals only."""

  def __init__(self, total: int, batch_size: int, start: int, stream=None):
    self.stream = stream or sys.stderr
    self.enabled = self.stream.isatty() and jax.process_index() == 0
    self.total, self.batch_size, self.start = total, batch_size, start
    self.t0 = self.last_draw = time.time()

  def update(self, done: int) -> None:
    now = time.time()
    if not self.enabled or (now - self.last_draw < 0.5 and done < self.total):
      return
    self.last_draw = now
    rate = (done - self.start) * self.batch_size / max(now - self.t0, 1e-9)
    eta = (self.total - done) * self.batch_size / max(rate, 1e-9)
    filled = int(30 * done / self.total)
    self.stream.write(
      f'\r[{"#" * filled}{"." * (30 - filled)}] {done}/{self.total}  '
      f'{rate:,.0f} img/s  ETA {time.strftime("%H:%M:%S", time.gmtime(eta))}'
      '\033[K'
    )
    self.stream.flush()

  def clear(self) -> None:
    if self.enabled:
      self.stream.write('\r\033[K')
      self.stream.flush()


class Evaluator:
  """Every benchmark of a run, ready to score the current parameters."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    builder,
    spec: data.DatasetSpec,
    seen: np.ndarray,
    model,
    mesh,
  ):
    self.seen = seen
    self.spec = spec
    max_examples = config.get('eval_max_examples', 0) or None
    splits: dict[str, dict[str, np.ndarray]] = {}

    def split(name):
      if name not in splits:
        splits[name] = data.load_study_split(builder, spec, name)
      return splits[name]

    def make(benchmark):
      return input_pipeline.eval_set(
        benchmark,
        split(benchmark.split),
        seen,
        config.eval_batch_size,
        jax.process_index(),
        jax.process_count(),
        max_examples,
      )

    self.sets = [make(benchmarks.BENCHMARKS[b]) for b in config.benchmarks]
    czsl = benchmarks.Benchmark('czsl', 'test', 'all', ())
    self.czsl = make(czsl) if (~seen).any() else None
    self.sharding = NamedSharding(mesh, P('data'))
    self.replicated = NamedSharding(mesh, P())
    self._outputs = jax.jit(
      functools.partial(train_lib.eval_outputs, model=model),
      in_shardings=(self.replicated, self.sharding),
      out_shardings=self.sharding,
    )

  def _collect(self, params, eval_set) -> dict[str, np.ndarray]:
    parts = []
    for batch in eval_set.batches:
      batch = input_pipeline.make_global(batch, self.sharding)
      out = self._outputs(params, batch)
      out.update({k: batch[k] for k in ('shape', 'color', 'mask')})
      parts.append(out)
    return {k: np.concatenate([_host(p[k]) for p in parts]) for k in parts[0]}

  def __call__(self, params, final: bool = False) -> dict[str, Any]:
    """Metrics named `eval/<benchmark>/<metric>`; confusions when final."""
    metrics: dict[str, Any] = {}
    for eval_set in self.sets:
      b = eval_set.benchmark
      out = self._collect(params, eval_set)
      n = int(out['mask'].sum())
      assert n == eval_set.num_examples, (n, eval_set.num_examples)
      for head in b.scores:
        metrics[f'eval/{b.name}/{head}_acc'] = evaluate.accuracy(
          out[f'{head}_logp'], out[head], out['mask']
        )
      if b.name == 'cue_conflict':
        bias = evaluate.shape_bias(
          out['shape_logp'],
          out['shape'],
          out['color'],
          out['mask'],
          self.spec.num_colors,
        )
        metrics['eval/cue_conflict/shape_bias'] = bias['shape_bias']
        metrics['eval/cue_conflict/neither'] = bias['neither']
      if final and b.name == 'iid':
        for head in ('shape', 'color'):
          metrics[f'confusion/{head}'] = evaluate.confusion_matrix(
            out[f'{head}_logp'], out[head], out['mask']
          ).tolist()
    if self.czsl is not None:
      out = self._collect(params, self.czsl)
      czsl = evaluate.czsl_metrics(
        out['shape_logp'],
        out['color_logp'],
        out['shape'],
        out['color'],
        out['mask'],
        self.seen,
      )
      metrics.update({f'eval/czsl/{k}': v for k, v in czsl.items()})
    return metrics


def _write_json(path: str, obj: Any) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _check_workdir(workdir: str, config_json: str, overwrite: bool) -> None:
  """Refuses a workdir that holds a run of a different config."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path) or overwrite:
    return
  with open(path) as f:
    previous = f.read()
  if json.loads(previous) != json.loads(config_json):
    raise config_lib.ConfigError(
      f'{workdir} holds a run with a different config.json; pass '
      '--overwrite to replace it, or choose another --workdir.'
    )


def run(
  config: ml_collections.ConfigDict,
  workdir: str,
  overwrite: bool = False,
) -> dict[str, Any]:
  """Trains and evaluates one model; returns what `summary.json` holds."""
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  config_json = config.to_json_best_effort(indent=2, sort_keys=True)
  _check_workdir(workdir, config_json, overwrite)

  builder = data.get_builder(config.dataset, config.get('data_dir') or None)
  spec = data.dataset_spec(builder)
  missing = [
    b
    for b in config.benchmarks
    if benchmarks.BENCHMARKS[b].split not in spec.splits
  ]
  if missing:
    available = [
      name
      for name, b in benchmarks.BENCHMARKS.items()
      if b.split in spec.splits
    ]
    raise config_lib.ConfigError(
      f'config.benchmarks holds {missing}, whose splits {spec.name} does '
      f'not have; set --config.benchmarks to a subset of {available}.'
    )
  if spec.image_size != config.image_size:
    raise config_lib.ConfigError(
      f'config.image_size={config.image_size} but {config.dataset} holds '
      f'{spec.image_size}px images; set --config.image_size='
      f'{spec.image_size}.'
    )
  # The training stream is cut into input shards; this process reads its own.
  shards = config.input_shards or jax.process_count()
  per_process = shards // jax.process_count()
  local_shards = range(
    jax.process_index() * per_process, (jax.process_index() + 1) * per_process
  )
  train_parts = [
    data.load_study_split(builder, _shard_spec(spec, j, shards), 'train')
    for j in local_shards
  ]
  num_train = sum(p['shape'].shape[0] for p in train_parts)
  num_train *= jax.process_count()
  total_steps = config_lib.total_steps(config, num_train)
  with config.unlocked():
    config.total_steps = total_steps
  seen = benchmarks.holdout(
    spec.num_shapes, spec.num_colors, config.unseen_pairs_per_attribute
  )
  mixture = benchmarks.Mixture(seen, config.correlation)

  model = train_lib.build_model(config, spec.num_shapes, spec.num_colors)
  params = train_lib.init_params(model, config.seed, config.image_size)
  if config.init_from:
    try:
      source = train_lib.load_run_params(config.init_from)
      params, copied = train_lib.init_from(
        params, source, config.init_from_patterns
      )
    except ValueError as e:
      raise config_lib.ConfigError(str(e)) from None
    logging.info(
      'Initialised %d parameter tensors from %s.',
      len(copied),
      config.init_from,
    )
  labels = train_lib.freeze_labels(params, config.freeze)
  optimizer = train_lib.make_optimizer(config, labels)
  schedule = train_lib.learning_rate_schedule(config)
  step_fn = functools.partial(
    train_lib.train_step,
    model=model,
    optimizer=optimizer,
    labels=labels,
    schedule=schedule,
    loss_weights=dict(config.loss_weights),
    seed=config.seed,
  )
  mesh = train_lib.make_mesh()
  replicated = NamedSharding(mesh, P())
  state = train_lib.create_train_state(params, optimizer)
  state = jax.device_put(state, replicated)

  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config_json)
  frozen = [
    p
    for p, label in zip(
      train_lib.param_paths(params),
      jax.tree.leaves(labels),
      strict=True,
    )
    if label == train_lib.FROZEN
  ]
  logging.info(
    'Model: %s parameters, %d frozen tensors%s.',
    f'{train_lib.count_params(params):,}',
    len(frozen),
    (': ' + ', '.join(frozen)) if frozen else '',
  )

  checkpoints = ocp.CheckpointManager(
    os.path.abspath(os.path.join(workdir, 'checkpoints')),
    options=ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints, create=True
    ),
  )
  state, start_step = _restore(checkpoints, state, workdir)
  writer = MetricWriter(workdir, start_step)

  evaluator = Evaluator(config, builder, spec, seen, model, mesh)
  batches = input_pipeline.concat_streams(
    [
      input_pipeline.train_batches(
        input_pipeline.TrainSource(
          images=part['image'],
          shapes=part['shape'],
          colors=part['color'],
          num_shapes=spec.num_shapes,
          num_colors=spec.num_colors,
        ),
        mixture.pair_probabilities(),
        config.seed,
        config.batch_size // shards,
        start_step,
        shard,
      )
      for shard, part in zip(local_shards, train_parts, strict=True)
    ]
  )
  batch_sharding = NamedSharding(mesh, P('data'))

  if config.parallelism == 'pmap':
    p_step = train_lib.pmap_train_step(step_fn)
    state = train_lib.replicate_for_pmap(state)
    n_local = jax.local_device_count()

    def put(item):
      step, batch = item
      return step, {
        k: v.reshape((n_local, -1) + v.shape[1:]) for k, v in batch.items()
      }
  else:
    p_step = train_lib.jit_train_step(step_fn, mesh)

    def put(item):
      step, batch = item
      return step, input_pipeline.make_global(batch, batch_sharding)

  def unreplicated(state):
    if config.parallelism == 'pmap':
      return jax.device_put(jax.tree.map(lambda x: x[0], state), replicated)
    return state

  preempted = {'flag': False}
  previous_handler = signal.getsignal(signal.SIGTERM)

  def on_sigterm(signum, frame):
    del signum, frame
    preempted['flag'] = True

  signal.signal(signal.SIGTERM, on_sigterm)

  last_good = start_step
  progress = Progress(total_steps, config.batch_size, start_step)
  t_start = time.time()
  t_last, step_last = time.time(), start_step
  train_metrics: dict[str, float] = {}
  final_eval: dict[str, Any] = {}
  step = start_step
  try:
    for step, batch in input_pipeline.prefetch(iter(batches), put):
      if step >= total_steps:
        break
      state, metrics = p_step(state, batch)
      done = step + 1
      is_last = done == total_steps
      progress.update(done)
      if done % config.log_every == 0 or is_last:
        metrics = jax.device_get(metrics)
        if config.parallelism == 'pmap':
          metrics = jax.tree.map(lambda x: x[0], metrics)
        if not all(math.isfinite(float(v)) for v in metrics.values()):
          raise TrainingDiverged(
            f'The loss became NaN or infinite between steps {last_good} '
            f'and {done}; the last good checkpoint is kept. Lower '
            'config.learning_rate or set config.grad_clip.'
          )
        last_good = done
        now = time.time()
        img_per_sec = (done - step_last) * config.batch_size / (now - t_last)
        eta = (total_steps - done) * config.batch_size / max(img_per_sec, 1)
        t_last, step_last = now, done
        train_metrics = {f'train/{k}': float(v) for k, v in metrics.items()}
        train_metrics['train/img_per_sec'] = img_per_sec
        writer.write(done, train_metrics)
        progress.clear()
        logging.info(
          'step %d/%d  loss %.4f  shape_acc %.3f  color_acc %.3f  '
          '%.0f img/s  ETA %s',
          done,
          total_steps,
          metrics['loss'],
          metrics['shape_acc'],
          metrics['color_acc'],
          img_per_sec,
          time.strftime('%H:%M:%S', time.gmtime(eta)),
        )
      if done % config.eval_every == 0 or is_last:
        eval_metrics = evaluator(unreplicated(state).params, final=is_last)
        scalars = {
          k: v for k, v in eval_metrics.items() if not k.startswith('conf')
        }
        writer.write(done, scalars)
        progress.clear()
        logging.info(
          'eval at step %d: %s',
          done,
          '  '.join(
            f'{k[5:]} {v:.3f}' for k, v in scalars.items() if 'acc' in k
          ),
        )
        if is_last:
          final_eval = eval_metrics
      stop = preempted['flag']
      if jax.process_count() > 1:
        # Every process must save the same step: agree at log steps.
        stop = done % config.log_every == 0 and bool(
          multihost_utils.process_allgather(np.asarray(stop)).any()
        )
      if done % config.checkpoint_every == 0 or is_last or stop:
        checkpoints.save(done, args=ocp.args.StandardSave(unreplicated(state)))
      if stop:
        checkpoints.wait_until_finished()
        logging.warning(
          'SIGTERM: saved a checkpoint at step %d and stopped; run the same '
          'command again to resume.',
          done,
        )
        raise SystemExit(0)
      if is_last:
        break
  finally:
    progress.clear()
    writer.close()
    checkpoints.wait_until_finished()
    checkpoints.close()
    signal.signal(signal.SIGTERM, previous_handler)

  summary = {
    'step': total_steps,
    'num_params': train_lib.count_params(params),
    'frozen': frozen,
    'wall_seconds_this_session': time.time() - t_start,
  }
  summary.update(train_metrics)
  summary.update(final_eval)
  if jax.process_index() == 0:
    _write_json(os.path.join(workdir, 'summary.json'), summary)
  return summary


def _shard_spec(
  spec: data.DatasetSpec, shard: int, num_shards: int
) -> data.DatasetSpec:
  """`spec` with its training split cut to one of `num_shards` shards."""
  if num_shards == 1:
    return spec
  import tensorflow_datasets as tfds

  split = tfds.even_splits(spec.splits['train'], n=num_shards)[shard]
  return dataclasses.replace(spec, splits={**spec.splits, 'train': split})


def _restore(
  checkpoints: ocp.CheckpointManager,
  state: train_lib.TrainState,
  workdir: str,
) -> tuple[train_lib.TrainState, int]:
  """The newest readable checkpoint's state, or `state` if there is none.

  An unreadable checkpoint (a crash while writing, a damaged disk) is moved
  to `<workdir>/damaged_checkpoints/` with a warning, and the one before it
  is tried; nothing is deleted.
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  damaged = []
  restored, start = state, 0
  checkpoints.reload()
  for step in sorted(checkpoints.all_steps(), reverse=True):
    try:
      restored = checkpoints.restore(
        step, args=ocp.args.StandardRestore(abstract)
      )
    except Exception as e:  # Orbax raises many kinds for damaged files.
      logging.warning(
        'The checkpoint at step %d is unreadable (%s: %s); trying the one '
        'before it.',
        step,
        type(e).__name__,
        str(e).splitlines()[0][:200] if str(e) else '',
      )
      damaged.append(step)
      continue
    start = int(step)
    logging.info('Resumed from the checkpoint at step %d.', step)
    break
  if damaged and jax.process_index() == 0:
    aside = os.path.join(workdir, 'damaged_checkpoints')
    os.makedirs(aside, exist_ok=True)
    for step in damaged:
      target = os.path.join(aside, f'{step}_{int(time.time())}')
      os.replace(os.path.join(str(checkpoints.directory), str(step)), target)
      logging.warning('Moved the unreadable checkpoint to %s.', target)
  if damaged:
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('moved damaged checkpoints')
    checkpoints.reload()
  return restored, start


def run_sweep(
  config: ml_collections.ConfigDict, workdir: str, overwrite: bool = False
) -> dict[str, dict[int, dict[str, Any]]]:
  """Runs every variant and seed; skips runs whose summary.json exists."""
  runs = []
  for name, overrides in config.variants.items():
    for seed in config.seeds:
      run_config = variant_config(config, dict(overrides), int(seed))
      config_lib.validate(run_config)
      runs.append((name, int(seed), run_config))

  results: dict[str, dict[int, dict[str, Any]]] = {}
  for i, (name, seed, run_config) in enumerate(runs):
    run_dir = os.path.join(workdir, name, f'seed_{seed}')
    summary_path = os.path.join(run_dir, 'summary.json')
    if os.path.exists(summary_path):
      logging.info('Run %s/seed_%d is finished; skipping it.', name, seed)
      with open(summary_path) as f:
        results.setdefault(name, {})[seed] = json.load(f)
      continue
    logging.info('Run %d/%d: %s, seed %d.', i + 1, len(runs), name, seed)
    results.setdefault(name, {})[seed] = run(run_config, run_dir, overwrite)
  return results


def devices_summary() -> str:
  return (
    f'{jax.process_count()} process(es), {jax.device_count()} '
    f'{jax.devices()[0].platform} device(s), jax {jax.__version__}'
  )
