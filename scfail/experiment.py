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
import logging as pylogging
import math
import os
import signal
import sys
import threading
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


class _QuietLibraries(pylogging.Filter):
  """Drops the INFO chatter of Orbax and TFDS; warnings still show."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    noisy = any(
      f'{os.sep}{lib}{os.sep}' in record.pathname
      for lib in ('orbax', 'tensorflow_datasets', 'etils')
    )
    return not noisy or record.levelno >= pylogging.WARNING


def quiet_library_logs() -> None:
  """Hides the INFO logs of Orbax and TFDS (for the command and notebooks)."""
  logger = pylogging.getLogger('absl')
  if not any(isinstance(f, _QuietLibraries) for f in logger.filters):
    logger.addFilter(_QuietLibraries())


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
        kept = [line for line in f if _step_of(line, resume_step)]
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


def _step_of(line: str, resume_step: int) -> bool:
  """Whether a metrics line is one a run resumed at `resume_step` keeps.

  A line cut short by a kill (not valid JSON) is dropped.
  """
  try:
    return json.loads(line)['step'] <= resume_step
  except (json.JSONDecodeError, KeyError):
    return False


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
    vmapped: bool = False,
  ):
    self.seen = seen
    self.vmapped = vmapped
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
    outputs = functools.partial(train_lib.eval_outputs, model=model)
    if vmapped:
      # Parameters of several seeds, stacked: one output per seed.
      outputs = jax.vmap(outputs, in_axes=(0, None))
    self._outputs = jax.jit(
      outputs,
      in_shardings=(self.replicated, self.sharding),
      out_shardings=NamedSharding(mesh, P(None, 'data'))
      if vmapped
      else self.sharding,
    )

  def _collect(self, params, eval_set) -> dict[str, np.ndarray]:
    """Outputs and labels of a whole set; with a seed axis when vmapped."""
    parts = []
    for batch in eval_set.batches:
      batch = input_pipeline.make_global(batch, self.sharding)
      out = self._outputs(params, batch)
      out.update({k: batch[k] for k in ('shape', 'color', 'mask')})
      parts.append(out)
    return {
      k: np.concatenate(
        [_host(p[k]) for p in parts],
        axis=1 if self.vmapped and k.endswith('_logp') else 0,
      )
      for k in parts[0]
    }

  def __call__(self, params, final: bool = False):
    """Metrics named `eval/<benchmark>/<metric>`; confusions when final.

    Returns one dict, or when `vmapped` a list of dicts, one per seed of
    the stacked `params`.
    """
    collected = [(s, self._collect(params, s)) for s in self.sets]
    czsl = self._collect(params, self.czsl) if self.czsl else None
    if not self.vmapped:
      return self._metrics(collected, czsl, final)
    num_seeds = jax.tree.leaves(params)[0].shape[0]

    def lane(out, i):
      return {k: v[i] if k.endswith('_logp') else v for k, v in out.items()}

    return [
      self._metrics(
        [(s, lane(out, i)) for s, out in collected],
        lane(czsl, i) if czsl else None,
        final,
      )
      for i in range(num_seeds)
    ]

  def _metrics(self, collected, czsl_out, final: bool) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for eval_set, out in collected:
      b = eval_set.benchmark
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
    if czsl_out is not None:
      out = czsl_out
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


# Fields that change how a run is computed, not what it computes.
_EXECUTION_FIELDS = ('num_parallel_seeds', 'parallelism')


def _config_json(config: ml_collections.ConfigDict) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True)


def _check_workdir(workdir: str, config_json: str, overwrite: bool) -> None:
  """Refuses a workdir that holds a run of a different config."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path) or overwrite:
    return
  with open(path) as f:
    previous = json.load(f)
  current = json.loads(config_json)
  for field in _EXECUTION_FIELDS:
    previous.pop(field, None)
    current.pop(field, None)
  if previous != current:
    raise config_lib.ConfigError(
      f'{workdir} holds a run with a different config.json; pass '
      '--overwrite to replace it, or choose another --workdir.'
    )


def run(
  config: ml_collections.ConfigDict,
  workdir: str,
  overwrite: bool = False,
) -> dict[str, Any]:
  """Trains and evaluates one model; returns what `summary.json` holds.

  With `config.num_parallel_seeds = K > 1`, trains seeds `config.seed` to
  `config.seed + K - 1` together, in one vmapped step, into
  `<workdir>/seed_<n>/` (the files K separate runs would write there), and
  returns `{'seed_<n>': summary}`.
  """
  k = config.num_parallel_seeds
  if k == 1:
    return run_seeds(config, [config.seed], [workdir], overwrite)[0]
  seeds = [config.seed + i for i in range(k)]
  dirs = [os.path.join(workdir, f'seed_{s}') for s in seeds]
  summaries = run_seeds(config, seeds, dirs, overwrite)
  return {f'seed_{s}': m for s, m in zip(seeds, summaries, strict=True)}


def _stack(trees: list[Any]) -> Any:
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def run_seeds(
  config: ml_collections.ConfigDict,
  seeds: list[int],
  workdirs: list[str],
  overwrite: bool = False,
) -> list[dict[str, Any]]:
  """Trains one model per seed, together when there are several.

  Each seed has its own initial parameters, data order, metrics,
  checkpoints and summary in its own work directory, exactly as separate
  runs would. Several seeds are trained in one jitted step, vmapped over a
  leading seed axis, which fills a large accelerator with a small model.

  Returns:
    The summaries, in the order of `seeds`.
  """
  config_lib.validate(config)
  num_seeds = len(seeds)
  vmapped = num_seeds > 1
  if vmapped and config.parallelism != 'jit':
    raise config_lib.ConfigError(
      f'config.num_parallel_seeds={num_seeds} needs '
      f"config.parallelism='jit', not {config.parallelism!r}."
    )
  lane_configs = []
  for seed, workdir in zip(seeds, workdirs, strict=True):
    lane = copy.deepcopy(config)
    lane.seed = seed
    lane_configs.append(lane)
    os.makedirs(workdir, exist_ok=True)
    _check_workdir(workdir, _config_json(lane), overwrite)

  finished = [os.path.join(w, 'summary.json') for w in workdirs]
  if all(os.path.exists(path) for path in finished):
    logging.info('Already finished: %s; nothing to do.', ', '.join(workdirs))
    summaries = []
    for path in finished:
      with open(path) as f:
        summaries.append(json.load(f))
    return summaries

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
  for lane in lane_configs:
    with lane.unlocked():
      lane.total_steps = total_steps
  with config.unlocked():
    config.total_steps = total_steps
  seen = benchmarks.holdout(
    spec.num_shapes, spec.num_colors, config.unseen_pairs_per_attribute
  )
  mixture = benchmarks.Mixture(seen, config.correlation)

  model = train_lib.build_model(config, spec.num_shapes, spec.num_colors)
  lane_params = []
  for seed in seeds:
    params = train_lib.init_params(model, seed, config.image_size)
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
    lane_params.append(params)
  params = lane_params[0]
  labels = train_lib.freeze_labels(params, config.freeze)
  optimizer = train_lib.make_optimizer(config, labels)
  step_kwargs = train_lib.step_arguments(config, model, optimizer, labels)
  mesh = train_lib.make_mesh()
  replicated = NamedSharding(mesh, P())
  lane_states = [
    jax.device_get(train_lib.create_train_state(p, optimizer))
    for p in lane_params
  ]

  for lane, workdir in zip(lane_configs, workdirs, strict=True):
    if jax.process_index() == 0:
      with open(os.path.join(workdir, 'config.json'), 'w') as f:
        f.write(_config_json(lane))
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
    'Model: %s parameters, %d frozen tensors%s%s.',
    f'{train_lib.count_params(params):,}',
    len(frozen),
    (': ' + ', '.join(frozen)) if frozen else '',
    f'; {num_seeds} seeds trained together' if vmapped else '',
  )

  managers = [
    ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, 'checkpoints')),
      options=ocp.CheckpointManagerOptions(
        max_to_keep=config.keep_checkpoints, create=True
      ),
    )
    for workdir in workdirs
  ]
  restored, start_step = _restore_lanes(
    managers, [jax.device_put(s, replicated) for s in lane_states], workdirs
  )
  if vmapped:
    state = jax.device_put(_stack(jax.device_get(restored)), replicated)
  else:
    state = restored[0]
  writers = [MetricWriter(w, start_step) for w in workdirs]
  evaluator = Evaluator(
    config, builder, spec, seen, model, mesh, vmapped=vmapped
  )

  def seed_stream(seed):
    return input_pipeline.concat_streams(
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
          seed,
          config.batch_size // shards,
          start_step,
          shard,
        )
        for shard, part in zip(local_shards, train_parts, strict=True)
      ]
    )

  if vmapped:
    batches = input_pipeline.stack_streams([seed_stream(s) for s in seeds])
  else:
    batches = seed_stream(seeds[0])

  if config.parallelism == 'pmap':
    p_step = train_lib.pmap_train_step(
      functools.partial(train_lib.train_step, seed=seeds[0], **step_kwargs)
    )
    state = train_lib.replicate_for_pmap(state)
    n_local = jax.local_device_count()

    def put(item):
      step, batch = item
      return step, {
        k: v.reshape((n_local, -1) + v.shape[1:]) for k, v in batch.items()
      }
  elif vmapped:
    batch_sharding = NamedSharding(mesh, P(None, 'data'))
    seed_array = jax.device_put(np.asarray(seeds, np.int32), replicated)
    vstep = jax.jit(
      jax.vmap(
        lambda st, b, sd: train_lib.train_step(st, b, seed=sd, **step_kwargs)
      ),
      in_shardings=(replicated, batch_sharding, replicated),
      out_shardings=(replicated, replicated),
      donate_argnums=(0,),
    )

    def p_step(state, batch):
      return vstep(state, batch, seed_array)

    def put(item):
      step, batch = item
      return step, input_pipeline.make_global(batch, batch_sharding)
  else:
    p_step = train_lib.jit_train_step(
      functools.partial(train_lib.train_step, seed=seeds[0], **step_kwargs),
      mesh,
    )
    batch_sharding = NamedSharding(mesh, P('data'))

    def put(item):
      step, batch = item
      return step, input_pipeline.make_global(batch, batch_sharding)

  def lane_state(state, i):
    """Seed i's state, as a single run holds it (for checkpoints)."""
    if config.parallelism == 'pmap':
      return jax.device_put(jax.tree.map(lambda x: x[0], state), replicated)
    if vmapped:
      return jax.tree.map(lambda x: x[i], state)
    return state

  def lane_metrics(metrics, i):
    if config.parallelism == 'pmap' or vmapped:
      return {k: v[i] for k, v in metrics.items()}
    return metrics

  preempted = {'flag': False}
  # Signal handlers can only be set from the main thread; a run started in
  # another thread (a notebook's background job) does without.
  in_main_thread = threading.current_thread() is threading.main_thread()
  if in_main_thread:
    previous_handler = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
      del signum, frame
      preempted['flag'] = True

    signal.signal(signal.SIGTERM, on_sigterm)

  images_per_step = config.batch_size * num_seeds
  last_good = start_step
  progress = Progress(total_steps, images_per_step, start_step)
  t_start = time.time()
  t_last, step_last = time.time(), start_step
  train_metrics: list[dict[str, float]] = [{} for _ in seeds]
  final_eval: list[dict[str, Any]] = [{} for _ in seeds]
  feed = input_pipeline.prefetch(iter(batches), put)
  try:
    waited = 0.0  # Seconds the loop spent waiting for input since last log.
    paused = 0.0  # Seconds spent evaluating since the last log: not training.
    while True:
      t_wait = time.time()
      try:
        step, batch = next(feed)
      except StopIteration:
        break
      waited += time.time() - t_wait
      if step >= total_steps:
        break
      state, metrics = p_step(state, batch)
      done = step + 1
      is_last = done == total_steps
      progress.update(done)
      if done % config.log_every == 0 or is_last:
        metrics = jax.device_get(metrics)
        now = time.time()
        train_s = max(now - t_last - paused, 1e-9)
        img_per_sec = (done - step_last) * images_per_step / train_s
        eta = (total_steps - done) * images_per_step / max(img_per_sec, 1)
        input_wait = waited / train_s
        t_last, step_last, waited, paused = now, done, 0.0, 0.0
        for i, seed in enumerate(seeds):
          m = lane_metrics(metrics, i)
          if not all(math.isfinite(float(v)) for v in m.values()):
            raise TrainingDiverged(
              f'The loss of seed {seed} became NaN or infinite between '
              f'steps {last_good} and {done}; the last good checkpoint is '
              'kept. Lower config.learning_rate or set config.grad_clip.'
            )
          train_metrics[i] = {f'train/{k}': float(v) for k, v in m.items()}
          train_metrics[i]['train/img_per_sec'] = img_per_sec / num_seeds
          # Fraction of the wall time spent waiting for the input pipeline.
          train_metrics[i]['train/input_wait'] = input_wait
          writers[i].write(done, train_metrics[i])
        last_good = done
        progress.clear()
        m = lane_metrics(metrics, 0)
        logging.info(
          'step %d/%d  loss %.4f  shape_acc %.3f  color_acc %.3f  '
          '%.0f img/s  ETA %s%s',
          done,
          total_steps,
          m['loss'],
          m['shape_acc'],
          m['color_acc'],
          img_per_sec,
          time.strftime('%H:%M:%S', time.gmtime(eta)),
          f'  (seed {seeds[0]} of {num_seeds})' if vmapped else '',
        )
      if done % config.eval_every == 0 or is_last:
        t_eval = time.time()
        if vmapped:
          results = evaluator(state.params, final=is_last)
        else:
          results = [evaluator(lane_state(state, 0).params, final=is_last)]
        for i, eval_metrics in enumerate(results):
          scalars = {
            k: v for k, v in eval_metrics.items() if not k.startswith('conf')
          }
          writers[i].write(done, scalars)
          if is_last:
            final_eval[i] = eval_metrics
        progress.clear()
        scalars = {
          k: v for k, v in results[0].items() if not k.startswith('conf')
        }
        logging.info(
          'eval at step %d%s: %s',
          done,
          f' (seed {seeds[0]})' if vmapped else '',
          '  '.join(
            f'{k[5:]} {v:.3f}' for k, v in scalars.items() if 'acc' in k
          ),
        )
        paused += time.time() - t_eval
      stop = preempted['flag']
      if jax.process_count() > 1:
        # Every process must save the same step: agree at log steps.
        stop = done % config.log_every == 0 and bool(
          multihost_utils.process_allgather(np.asarray(stop)).any()
        )
      if done % config.checkpoint_every == 0 or is_last or stop:
        for i, manager in enumerate(managers):
          manager.save(done, args=ocp.args.StandardSave(lane_state(state, i)))
      if stop:
        for manager in managers:
          manager.wait_until_finished()
        logging.warning(
          'SIGTERM: saved a checkpoint at step %d and stopped; run the same '
          'command again to resume.',
          done,
        )
        raise SystemExit(0)
      if is_last:
        break
  finally:
    feed.close()
    progress.clear()
    for writer in writers:
      writer.close()
    for manager in managers:
      manager.wait_until_finished()
      manager.close()
    if in_main_thread:
      signal.signal(signal.SIGTERM, previous_handler)

  if start_step >= total_steps and not final_eval[0]:
    # Killed after its last checkpoint but before its summary: evaluate the
    # final state again rather than train.
    if vmapped:
      final_eval = evaluator(state.params, final=True)
    else:
      final_eval = [evaluator(lane_state(state, 0).params, final=True)]

  summaries = []
  for i, workdir in enumerate(workdirs):
    summary = {
      'step': total_steps,
      'num_params': train_lib.count_params(params),
      'frozen': frozen,
      'wall_seconds_this_session': time.time() - t_start,
    }
    summary.update(train_metrics[i])
    summary.update(final_eval[i])
    if jax.process_index() == 0:
      _write_json(os.path.join(workdir, 'summary.json'), summary)
    summaries.append(summary)
  return summaries


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


def _restore_lanes(
  managers: list[ocp.CheckpointManager],
  states: list[train_lib.TrainState],
  workdirs: list[str],
) -> tuple[list[train_lib.TrainState], int]:
  """Every seed's state at the newest step that all of them can restore."""
  results = [
    _restore(m, s, w)
    for m, s, w in zip(managers, states, workdirs, strict=True)
  ]
  steps = [step for _, step in results]
  common = min(steps)
  if all(step == common for step in steps):
    return [state for state, _ in results], common
  try:
    lanes = []
    for manager, state in zip(managers, states, strict=True):
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
      lanes.append(
        state
        if common == 0
        else manager.restore(common, args=ocp.args.StandardRestore(abstract))
      )
  except Exception as e:  # A seed lacks that step: start all again.
    logging.warning(
      'The seeds were checkpointed at different steps %s and cannot all '
      'restore step %d (%s); starting them all from the beginning.',
      steps,
      common,
      type(e).__name__,
    )
    return states, 0
  logging.info('Resumed every seed from step %d.', common)
  return lanes, common


def run_sweep(
  config: ml_collections.ConfigDict, workdir: str, overwrite: bool = False
) -> dict[str, dict[int, dict[str, Any]]]:
  """Runs every variant and seed; skips runs whose summary.json exists.

  With `num_parallel_seeds = K`, the unfinished seeds of a variant are
  trained K at a time.
  """
  plan = []
  for name, overrides in config.variants.items():
    run_config = variant_config(config, dict(overrides), int(config.seeds[0]))
    config_lib.validate(run_config)
    plan.append((name, run_config, [int(s) for s in config.seeds]))

  results: dict[str, dict[int, dict[str, Any]]] = {}
  total = sum(len(seeds) for _, _, seeds in plan)
  done = 0
  for name, run_config, seeds in plan:
    todo = []
    for seed in seeds:
      run_dir = os.path.join(workdir, name, f'seed_{seed}')
      summary_path = os.path.join(run_dir, 'summary.json')
      if os.path.exists(summary_path):
        logging.info('Run %s/seed_%d is finished; skipping it.', name, seed)
        with open(summary_path) as f:
          results.setdefault(name, {})[seed] = json.load(f)
        done += 1
      else:
        todo.append(seed)
    k = run_config.num_parallel_seeds
    for start in range(0, len(todo), k):
      group = todo[start : start + k]
      done += len(group)
      logging.info(
        'Runs %d/%d: %s, seed%s %s.',
        done,
        total,
        name,
        's' if len(group) > 1 else '',
        ', '.join(map(str, group)),
      )
      dirs = [os.path.join(workdir, name, f'seed_{s}') for s in group]
      summaries = run_seeds(run_config, group, dirs, overwrite)
      for seed, summary in zip(group, summaries, strict=True):
        results.setdefault(name, {})[seed] = summary
  return results


def devices_summary() -> str:
  return (
    f'{jax.process_count()} process(es), {jax.device_count()} '
    f'{jax.devices()[0].platform} device(s), jax {jax.__version__}'
  )
