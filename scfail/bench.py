r"""Throughput of scfail, measured on the machine at hand.

  python -m scfail.bench step   # train steps, FLOP/s, the PyTorch peer
  python -m scfail.bench data   # rendering, TFDS build, tf.data vs the step
  python -m scfail.bench seeds  # K seeds in one vmapped step vs K in turn
  python -m scfail.bench run    # a real training run: img/s, input wait
  python -m scfail.bench all    # every suite

Each suite prints tables, ratios first, and writes JSON to `--out` (default
`runs/bench/<suite>.json`). BENCHMARKS.md holds the figures of record.

Method. Everything a suite compares is timed in one process, in rounds:
each round runs every variant once for about `--min_time` seconds, one
after the other. A variant's figure is its median over rounds, and a ratio
is the median of the per-round ratios, so that a slow spell on a shared
machine slows both sides of a ratio alike; `ratios_best` takes the best
round of each side instead. Ratios are the figures that travel between
machines; absolute rates hold only for the hardware named in the JSON's
`machine`, under the load average it records. `--reference_model` times
another version of `scfail/model.py` beside the current one.

- Matrix-multiply peak: float32 XLA matmuls of a few square sizes, timed
  in the same rounds; the best size's median is the peak.
- Achieved FLOP/s of a train step: counted training FLOPs (3x the forward
  FLOPs of `scfail.model.forward_flops`, less the backward passes that a
  frozen stem and embedding skip) over the median step time, cross-checked
  against XLA's `cost_analysis()` of the compiled step (one device's
  share, times the devices). Its fraction of the peak is taken against
  the peak of one device times the devices.
- Memory: the compiled step's XLA memory analysis on one device
  (arguments, outputs and temporaries), the device's peak where the
  backend reports one, and otherwise the process's peak resident set
  (every variant and library of the run together).
- The PyTorch peer (`scfail.torch_peer`, an optional extra): the same
  architecture, shapes and optimizer, eager and under `torch.compile`,
  with as many threads as the process has cores.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import importlib.util
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from scfail import config_lib
from scfail import model as model_lib
from scfail import train as train_lib

SUITES = ('step', 'data', 'seeds', 'run', 'all')
MODELS = ('default', 'full')  # 'full': configs/baseline.py:full's model.
FROZEN_EMBEDDINGS = ('stem/.*', 'embedding/.*', 'pos_embedding')
CPU_FULL_BATCH = 32  # A CPU trains the full model at a few images/s.
NUM_SHAPES = NUM_COLORS = 8
BASELINE_CONFIG = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  'configs',
  'baseline.py',
)


@dataclasses.dataclass
class Settings:
  """What a bench run measures and how long it spends on each figure.

  Attributes:
    batch_size: global batch of the default model (0: its config's).
    full_batch_size: global batch of the full model (0: its config's on an
      accelerator, `CPU_FULL_BATCH` on a CPU).
    models: which of `MODELS` the step suite measures.
    model_overrides: per model name, `config.model` fields to change
      (tests shrink the models with it).
    rounds: alternating repetitions of every variant.
    min_time: seconds each variant runs in each round (at least one unit).
    matmul_sizes: sides of the square float32 matmuls of the peak.
    torch: time the PyTorch peer (skipped with a note when it is missing).
    torch_compile: also time the peer under `torch.compile`.
    torch_compile_limit: seconds `torch.compile` may take; a slower one is
      timed nonetheless (it cannot be stopped) and flagged in the notes.
    render_images: images the data suite renders.
    data_dir: where the data suite builds `scfail_shapes/tiny` ('': a new
      temporary directory, so that the build is timed from scratch).
    reference_model: path of another version of `scfail/model.py` (say,
      `git show HEAD:scfail/model.py > /tmp/model.py`), whose `Hybrid` the
      step suite times beside the current one, for before/after figures.
    run_steps: training steps of the run suite's real run.
    run_overrides: top-level config fields the run suite changes (tests
      point it at a tiny dataset with it).
  """

  batch_size: int = 0
  full_batch_size: int = 0
  models: tuple[str, ...] = MODELS
  model_overrides: dict[str, dict[str, Any]] = dataclasses.field(
    default_factory=dict
  )
  rounds: int = 5
  min_time: float = 1.0
  matmul_sizes: tuple[int, ...] = (1024, 2048)
  torch: bool = True
  torch_compile: bool = True
  torch_compile_limit: float = 300.0
  render_images: int = 2048
  data_dir: str = ''
  reference_model: str = ''
  run_steps: int = 300
  run_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)


# Timing.


@dataclasses.dataclass
class Variant:
  """One thing to time: `run(n)` does n units of work and waits for them.

  A unit is one train step, one matmul or one batch; `images` and `flops`
  are a unit's. `seconds` collects one unit's time, one entry per round.
  """

  name: str
  run: Callable[[int], None]
  images: int = 0
  flops: float = 0.0
  units: int = 1
  seconds: list[float] = dataclasses.field(default_factory=list)

  def calibrate(self, min_time: float) -> None:
    """Warms up, then picks how many units a round runs (about min_time)."""
    self.run(1)
    start = time.perf_counter()
    self.run(1)
    once = time.perf_counter() - start
    self.units = max(1, math.ceil(min_time / max(once, 1e-6)))

  def time_once(self) -> None:
    start = time.perf_counter()
    self.run(self.units)
    self.seconds.append((time.perf_counter() - start) / self.units)

  @property
  def median_s(self) -> float:
    return float(np.median(self.seconds))

  @property
  def images_per_s(self) -> float:
    return self.images / self.median_s

  @property
  def flops_per_s(self) -> float:
    return self.flops / self.median_s

  def record(self, devices: int) -> dict[str, Any]:
    """The JSON record of this variant's timings."""
    seconds = np.asarray(self.seconds)
    out: dict[str, Any] = {
      'median_s': self.median_s,
      'min_s': float(seconds.min()),
      'max_s': float(seconds.max()),
      'seconds': [float(x) for x in seconds],
      'units_per_round': self.units,
    }
    if self.images:
      out['batch'] = self.images
      out['images_per_s'] = self.images_per_s
      out['images_per_s_per_device'] = self.images_per_s / devices
    if self.flops:
      out['flops_per_unit'] = self.flops
      out['flops_per_s'] = self.flops_per_s
    return out


def time_in_rounds(
  variants: Sequence[Variant], rounds: int, min_time: float
) -> None:
  """Times every variant once per round, the variants one after another."""
  for v in variants:
    v.calibrate(min_time)
  for r in range(rounds):
    for v in variants:
      v.time_once()
    line = ', '.join(f'{v.name} {v.seconds[-1] * 1e3:.0f} ms' for v in variants)
    print(f'  round {r + 1}/{rounds}: {line}', flush=True)


def time_ratio(
  numerator: Variant, denominator: Variant, best: bool = False
) -> float:
  """Median over rounds of numerator's unit time over denominator's.

  With `best`, the ratio of the two best (shortest) times instead: what
  the two would do on a machine free of other work.
  """
  ours, theirs = np.asarray(numerator.seconds), np.asarray(denominator.seconds)
  if best:
    return float(ours.min() / theirs.min())
  return float(np.median(ours / theirs))


def rate_ratio(
  numerator: Variant, denominator: Variant, best: bool = False
) -> float:
  """Numerator's images/s over denominator's, as `time_ratio` takes them."""
  ours = numerator.images / np.asarray(numerator.seconds)
  theirs = denominator.images / np.asarray(denominator.seconds)
  if best:
    return float(ours.max() / theirs.max())
  return float(np.median(ours / theirs))


def matmul_variant(size: int) -> Variant:
  """A float32 [size, size] @ [size, size] XLA matmul."""
  keys = jax.random.split(jax.random.key(size))
  a = jax.random.normal(keys[0], (size, size), jnp.float32)
  b = jax.random.normal(keys[1], (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)

  def run(n: int) -> None:
    out = None
    for _ in range(n):
      out = matmul(a, b)
    jax.block_until_ready(out)

  return Variant(f'matmul_{size}', run, flops=2.0 * size**3)


# Models and their train steps.


def model_config(name: str, settings: Settings) -> ml_collections.ConfigDict:
  """The run config of model `name`, with the settings' overrides."""
  if name == 'default':
    config = config_lib.base_config()
  elif name == 'full':
    # configs/ is not a package: read the preset from its file.
    spec = importlib.util.spec_from_file_location('_baseline', BASELINE_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config('full')
  else:
    raise ValueError(f'Unknown model {name!r}; use one of {MODELS}.')
  for field, value in settings.model_overrides.get(name, {}).items():
    config.model[field] = value
  return config


def batch_size(
  name: str, config: ml_collections.ConfigDict, settings: Settings
) -> tuple[int, str]:
  """The global batch the bench uses for model `name`, and where it is from."""
  if name == 'default':
    if settings.batch_size:
      return settings.batch_size, 'set by --batch_size'
    return config.batch_size, 'the config batch'
  if settings.full_batch_size:
    return settings.full_batch_size, 'set by --full_batch_size'
  if jax.default_backend() == 'cpu':
    return CPU_FULL_BATCH, (
      f'{CPU_FULL_BATCH}, not the preset batch {config.batch_size}: a CPU '
      'trains the full model at a few images a second'
    )
  return config.batch_size, 'the config batch'


def random_batch(batch: int, image_size: int) -> dict[str, np.ndarray]:
  """A training batch of random uint8 images and labels."""
  rng = np.random.default_rng(0)
  return {
    'image': rng.integers(0, 256, (batch, image_size, image_size, 3), np.uint8),
    'shape': rng.integers(0, NUM_SHAPES, batch).astype(np.int32),
    'color': rng.integers(0, NUM_COLORS, batch).astype(np.int32),
  }


def training_flops(
  model: model_lib.Hybrid, image_size: int, frozen_embeddings: bool
) -> int:
  """Counted FLOPs of one image's train step (forward and backward).

  A backward pass costs twice its forward (gradients of the inputs and of
  the weights). With the stem and embedding frozen, no gradient is needed
  below the first block, so those layers cost their forward only.
  """
  forward = model_lib.forward_flops(model, image_size)
  if not frozen_embeddings:
    return 3 * forward
  heads = 2 * model.width * (model.num_shapes + model.num_colors)
  embedding = model_lib.forward_flops(model.clone(depth=0), image_size) - heads
  return 3 * forward - 2 * embedding


@dataclasses.dataclass
class JaxStep:
  """scfail's compiled train step of one model, with a state and a batch."""

  model: model_lib.Hybrid
  compiled: Any
  state: list[Any]  # One entry, replaced by each (donating) step.
  batch: dict[str, jax.Array]
  compile_s: float
  counted_flops: int
  xla_flops: float  # Every device's together.
  memory: dict[str, int]  # One device's.


def reference_hybrid(path: str, model: model_lib.Hybrid) -> Any:
  """`model`'s twin, built by the `Hybrid` of the model.py file at path."""
  spec = importlib.util.spec_from_file_location('_reference_model', path)
  module = importlib.util.module_from_spec(spec)
  # Flax modules are dataclasses, which look their module up by name.
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  fields = [
    f.name
    for f in dataclasses.fields(model)
    if f.init and f.name not in ('parent', 'name')
  ]
  return module.Hybrid(**{f: getattr(model, f) for f in fields})


def jax_step(
  config: ml_collections.ConfigDict,
  batch: int,
  freeze: Sequence[str] = (),
  reference_model: str = '',
) -> JaxStep:
  """Builds and compiles the real train step of `scfail.train`.

  With `reference_model`, the model is that file's `Hybrid` instead.
  """
  model = train_lib.build_model(config, NUM_SHAPES, NUM_COLORS)
  if reference_model:
    model = reference_hybrid(reference_model, model)
  params = train_lib.init_params(model, config.seed, config.image_size)
  labels = train_lib.freeze_labels(params, freeze)
  optimizer = train_lib.make_optimizer(config, labels)
  step_fn = functools.partial(
    train_lib.train_step,
    seed=config.seed,
    **train_lib.step_arguments(config, model, optimizer, labels),
  )
  mesh = train_lib.make_mesh()
  if batch % mesh.size:
    raise ValueError(
      f'A batch of {batch} does not split over {mesh.size} devices; use a '
      f'multiple of {mesh.size}.'
    )
  # From the host, so that the donated state is this step's own copy.
  state = jax.device_get(train_lib.create_train_state(params, optimizer))
  state = jax.device_put(state, NamedSharding(mesh, P()))
  data = jax.device_put(
    random_batch(batch, config.image_size), NamedSharding(mesh, P('data'))
  )
  start = time.perf_counter()
  compiled = train_lib.jit_train_step(step_fn, mesh).lower(state, data)
  compiled = compiled.compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  # The compiled module is one device's share of the step.
  xla_flops = mesh.size * float(cost.get('flops', float('nan')))
  return JaxStep(
    model=model,
    compiled=compiled,
    state=[state],
    batch=data,
    compile_s=compile_s,
    counted_flops=batch
    * training_flops(model, config.image_size, bool(freeze)),
    xla_flops=xla_flops,
    memory=_xla_memory(compiled),
  )


def step_variant(
  name: str, step: JaxStep, next_batch: Callable[[], Any] | None = None
) -> Variant:
  """Times `step` on its own batch, or on batches from `next_batch`."""

  def run(n: int) -> None:
    for _ in range(n):
      batch = step.batch if next_batch is None else next_batch()
      step.state[0], metrics = step.compiled(step.state[0], batch)
    jax.block_until_ready((step.state[0], metrics))

  images = int(step.batch['image'].shape[0])
  return Variant(name, run, images=images, flops=step.counted_flops)


def _xla_memory(compiled: Any) -> dict[str, int]:
  try:
    analysis = compiled.memory_analysis()
  except Exception:  # Not every backend implements it.
    return {}
  if analysis is None:
    return {}
  out = {
    f'{f}_bytes': int(getattr(analysis, f'{f}_size_in_bytes', 0))
    for f in ('argument', 'output', 'alias', 'temp')
  }
  out['step_bytes'] = (
    out['argument_bytes']
    + out['output_bytes']
    - out['alias_bytes']
    + out['temp_bytes']
  )
  return out


def peak_memory() -> dict[str, Any]:
  """The device's peak bytes in use, or else the process's peak RSS."""
  stats = jax.local_devices()[0].memory_stats()
  if stats and 'peak_bytes_in_use' in stats:
    return {
      'bytes': int(stats['peak_bytes_in_use']),
      'source': 'device memory_stats()["peak_bytes_in_use"]',
    }
  return {
    # ru_maxrss counts kilobytes on Linux.
    'bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    'source': (
      'process peak RSS from getrusage: the backend reports no device '
      'memory; it covers every variant and library of the run together'
    ),
  }


# The PyTorch peer.


def load_torch_peer() -> tuple[Any, str]:
  """(`scfail.torch_peer`, '') or (None, why it cannot be imported)."""
  try:
    from scfail import torch_peer
  except ImportError as e:
    return None, str(e)
  return torch_peer, ''


def torch_variant(
  peer: Any,
  name: str,
  config: ml_collections.ConfigDict,
  batch: int,
  compile_model: bool = False,
) -> tuple[Variant, dict[str, Any]]:
  """The peer's train step as a variant, and facts about it.

  The first step (which compiles under `torch.compile`) is timed apart.
  """
  import torch

  model = train_lib.build_model(config, NUM_SHAPES, NUM_COLORS)
  module = peer.Hybrid(model, config.image_size)
  autocast = np.dtype(model.dtype) == np.dtype(jnp.bfloat16)
  trained = torch.compile(module) if compile_model else module
  step = peer.make_train_step(trained, config, autocast=autocast)
  data = {
    k: torch.from_numpy(v.astype(np.int64) if k != 'image' else v)
    for k, v in random_batch(batch, config.image_size).items()
  }
  start = time.perf_counter()
  step(data)
  info = {
    'threads': torch.get_num_threads(),
    'autocast_bfloat16': autocast,
    'first_step_s': time.perf_counter() - start,
  }

  def run(n: int) -> None:
    for _ in range(n):
      step(data)

  flops = batch * 3 * model_lib.forward_flops(model, config.image_size)
  return Variant(name, run, images=batch, flops=flops), info


def parity(peer: Any, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Both models' parameter and FLOP counts, and their logits' largest gap.

  The gap is measured in float32, with the Flax parameters loaded into the
  peer.
  """
  import torch

  model = train_lib.build_model(config, NUM_SHAPES, NUM_COLORS)
  model = model.clone(dtype=jnp.float32)
  params = train_lib.init_params(model, config.seed, config.image_size)
  module = peer.Hybrid(model, config.image_size)
  peer.load_flax_params(module, params)
  images = random_batch(4, config.image_size)['image']
  ours = model.apply({'params': params}, images)
  module.eval()
  with torch.no_grad():
    theirs = module(torch.from_numpy(images))
  gap = max(
    float(np.abs(np.asarray(ours[h]) - theirs[h].numpy()).max())
    for h in ('shape', 'color')
  )
  return {
    'params_scfail': train_lib.count_params(params),
    'params_torch': peer.count_params(module),
    'forward_flops_scfail': model_lib.forward_flops(model, config.image_size),
    'forward_flops_torch': peer.forward_flops(module, config.image_size),
    'max_logit_gap': gap,
  }


# Suites.


def environment() -> dict[str, Any]:
  """The date, command, machine and library versions of a run."""
  import flax
  import optax

  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      names = [ln.split(':', 1)[1].strip() for ln in f if 'model name' in ln]
    cpu = names[0] if names else cpu
  except OSError:
    pass
  versions = {
    'python': platform.python_version(),
    'jax': jax.__version__,
    'flax': flax.__version__,
    'optax': optax.__version__,
  }
  for lib in ('torch', 'tensorflow', 'tensorflow_datasets'):
    if lib in sys.modules:
      versions[lib] = sys.modules[lib].__version__
  devices = jax.devices()
  return {
    'date': datetime.date.today().isoformat(),
    'command': ' '.join(['python -m scfail.bench', *sys.argv[1:]]),
    'machine': {
      'cpu': cpu,
      'cores': len(os.sched_getaffinity(0)),
      'backend': jax.default_backend(),
      'device_kind': devices[0].device_kind,
      'device_count': len(devices),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
    },
    'versions': versions,
  }


def step_ratios(
  models: Sequence[str],
  steps: dict[str, tuple[JaxStep, Variant]],
  peers: dict[str, tuple[Variant, dict[str, Any]]],
  peak: float,
  best: bool = False,
) -> dict[str, float]:
  """The step suite's ratios, from medians of rounds (or best rounds)."""
  ratios: dict[str, float] = {}
  for name in models:
    base = steps[f'scfail/{name}'][1]
    fastest = min(base.seconds) if best else base.median_s
    ratios[f'{name}/fraction_of_matmul_peak'] = base.flops / fastest / peak
    for kind in ('torch_eager', 'torch_compile'):
      if f'{kind}/{name}' in peers:
        ratios[f'{name}/scfail_over_{kind}'] = rate_ratio(
          base, peers[f'{kind}/{name}'][0], best
        )
    if f'scfail/{name}/reference_model' in steps:
      ratios[f'{name}/scfail_over_reference_model'] = rate_ratio(
        base, steps[f'scfail/{name}/reference_model'][1], best
      )
    for kind in ('frozen_embeddings', 'no_attention'):
      if f'scfail/{name}/{kind}' in steps:
        ratios[f'{name}/{kind}_over_baseline_step_time'] = time_ratio(
          steps[f'scfail/{name}/{kind}'][1], base, best
        )
    key = f'torch_eager/{name}/no_attention'
    if key in peers:
      ratios[f'{name}/no_attention/scfail_over_torch_eager'] = rate_ratio(
        steps[f'scfail/{name}/no_attention'][1], peers[key][0], best
      )
  return ratios


def step_suite(settings: Settings) -> dict[str, Any]:
  """Train-step throughput against the matmul peak and the PyTorch peer."""
  load_start = list(os.getloadavg())
  out: dict[str, Any] = {'suite': 'step', **environment()}
  out['settings'] = dataclasses.asdict(settings)
  notes: list[str] = []
  devices = jax.device_count()

  peer = None
  if settings.torch:
    peer, why = load_torch_peer()
    if peer is None:
      notes.append(f'PyTorch peer skipped: {why}')
    else:
      peer.set_threads()
      out['versions']['torch'] = sys.modules['torch'].__version__

  matmuls = [matmul_variant(n) for n in settings.matmul_sizes]
  variants: list[Variant] = list(matmuls)
  steps: dict[str, tuple[JaxStep, Variant]] = {}
  peers: dict[str, tuple[Variant, dict[str, Any]]] = {}
  models: dict[str, Any] = {}
  for name in settings.models:
    config = model_config(name, settings)
    batch, batch_note = batch_size(name, config, settings)
    if batch_note != 'the config batch':
      notes.append(f'{name} model: batch {batch_note}.')
    no_attention = config.copy_and_resolve_references()
    no_attention.model.use_attention = False
    runs = {'': ((), config)}
    if name == 'default':
      runs['/frozen_embeddings'] = (FROZEN_EMBEDDINGS, config)
      runs['/no_attention'] = ((), no_attention)
      if settings.reference_model:
        runs['/reference_model'] = ((), config)
    for suffix, (freeze, cfg) in runs.items():
      key = f'scfail/{name}{suffix}'
      print(f'Compiling {key} (batch {batch})...', flush=True)
      reference = settings.reference_model if 'reference' in suffix else ''
      step = jax_step(cfg, batch, freeze, reference)
      steps[key] = (step, step_variant(key, step))
      variants.append(steps[key][1])
    model = steps[f'scfail/{name}'][0].model
    models[name] = {
      'model': config.model.to_dict(),
      'image_size': config.image_size,
      'batch': batch,
      'batch_note': batch_note,
      'params': train_lib.count_params(
        jax.eval_shape(
          functools.partial(train_lib.init_params, model, 0, config.image_size)
        )
      ),
      'forward_flops_per_image': model_lib.forward_flops(
        model, config.image_size
      ),
    }
    if peer is None:
      continue
    models[name]['parity'] = parity(peer, config)
    peer_runs = {f'torch_eager/{name}': (config, False)}
    if name == 'default':
      peer_runs[f'torch_eager/{name}/no_attention'] = (no_attention, False)
      if settings.torch_compile:
        peer_runs[f'torch_compile/{name}'] = (config, True)
    for key, (cfg, compiled) in peer_runs.items():
      print(f'Preparing {key}...', flush=True)
      try:
        peers[key] = torch_variant(peer, key, cfg, batch, compiled)
      except Exception as e:  # Inductor needs a working C++ toolchain.
        first_line = (str(e).splitlines() or [''])[0]
        notes.append(f'{key} skipped: {type(e).__name__}: {first_line}')
        continue
      variants.append(peers[key][0])
      first = peers[key][1]['first_step_s']
      if compiled and first > settings.torch_compile_limit:
        notes.append(
          f'{key}: torch.compile took {first:.0f} s, over the '
          f'{settings.torch_compile_limit:.0f} s limit.'
        )

  print(f'Timing {len(variants)} variants in {settings.rounds} rounds...')
  time_in_rounds(variants, settings.rounds, settings.min_time)

  best = max(matmuls, key=lambda v: v.flops_per_s)
  peak = best.flops_per_s * devices
  out['matmul'] = {
    'flops_per_s': {v.name: v.flops_per_s for v in matmuls},
    'peak_flops_per_s': best.flops_per_s,
    'peak_size': int(best.name.split('_')[1]),
  }
  records: dict[str, Any] = {v.name: v.record(devices) for v in matmuls}
  for key, (step, v) in steps.items():
    records[key] = {
      **v.record(devices),
      'compile_s': step.compile_s,
      'counted_flops_per_step': step.counted_flops,
      'xla_flops_per_step': step.xla_flops,
      'xla_over_counted_flops': step.xla_flops / step.counted_flops,
      'achieved_flops_per_s': v.flops_per_s,
      'fraction_of_matmul_peak': v.flops_per_s / peak,
      'xla_memory_per_device': step.memory,
    }
  for key, (v, info) in peers.items():
    records[key] = {
      **v.record(devices),
      **info,
      'achieved_flops_per_s': v.flops_per_s,
      'fraction_of_matmul_peak': v.flops_per_s / peak,
    }
  out['variants'] = records
  out['models'] = models
  out['memory_peak'] = peak_memory()

  out['ratios'] = step_ratios(settings.models, steps, peers, peak)
  out['ratios_best'] = step_ratios(settings.models, steps, peers, peak, True)
  out['load_average'] = {'start': load_start, 'end': list(os.getloadavg())}
  if (
    max(load_start[0], out['load_average']['end'][0]) > out['machine']['cores']
  ):
    notes.append(
      f'Other work loaded the machine (load average {load_start[0]:.1f} at '
      f'the start, {out["load_average"]["end"][0]:.1f} at the end, on '
      f"{out['machine']['cores']} cores): PyTorch's OpenMP threads slow "
      "down far more than XLA's under such load; see ratios_best."
    )
  out['notes'] = notes
  return out


def data_suite(settings: Settings) -> dict[str, Any]:
  """Images/s of rendering, the TFDS build and tf.data, beside the step."""
  from scfail import benchmarks, data, input_pipeline, render

  load_start = list(os.getloadavg())
  out: dict[str, Any] = {'suite': 'data', **environment()}
  out['settings'] = dataclasses.asdict(settings)
  config = model_config('default', settings)
  devices = jax.device_count()

  # Rendering, in the chunks of a TFDS build.
  rng = np.random.default_rng(0)
  n = settings.render_images
  pairs = rng.permutation(np.arange(n) % (NUM_SHAPES * NUM_COLORS))
  start = time.perf_counter()
  for i in range(0, n, 500):
    chunk = pairs[i : i + 500]
    factors = render.sample_factors(
      rng, chunk // NUM_COLORS, chunk % NUM_COLORS
    )
    render.render(factors, config.image_size)
  render_s = time.perf_counter() - start

  # The whole TFDS build of scfail_shapes/tiny (every split).
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    builder = data.get_builder('scfail_shapes/tiny', settings.data_dir or tmp)
    build_s = time.perf_counter() - start
    built = sum(s.num_examples for s in builder.info.splits.values())
    # A run reads its training split into memory once, at the start.
    start = time.perf_counter()
    train = data.load_split(builder, 'train', ('image', 'shape', 'color'))
    read_s = time.perf_counter() - start
    out['versions']['tensorflow'] = sys.modules['tensorflow'].__version__
    out['versions']['tensorflow_datasets'] = sys.modules[
      'tensorflow_datasets'
    ].__version__

  source = input_pipeline.TrainSource(
    images=train['image'],
    shapes=train['shape'].astype(np.int64),
    colors=train['color'].astype(np.int64),
    num_shapes=NUM_SHAPES,
    num_colors=NUM_COLORS,
  )
  seen = benchmarks.holdout(
    NUM_SHAPES, NUM_COLORS, config.unseen_pairs_per_attribute
  )
  probabilities = benchmarks.Mixture(seen, config.correlation)
  probabilities = probabilities.pair_probabilities()
  batch, _ = batch_size('default', config, settings)

  def stream():
    return input_pipeline.train_batches(
      source, probabilities, config.seed, batch, 0
    )

  host_batches = stream()

  def pull(n: int) -> None:
    for _ in range(n):
      next(host_batches)

  pipeline = Variant('tf.data', pull, images=batch)
  step = jax_step(config, batch)
  alone = step_variant('train step', step)
  # As a run trains: a thread pulls batches and puts them on the devices
  # while the step runs.
  sharding = NamedSharding(train_lib.make_mesh(), P('data'))
  device_batches = input_pipeline.prefetch(
    stream(), lambda item: jax.device_put(item[1], sharding)
  )
  fed = step_variant('fed train step', step, lambda: next(device_batches))

  variants = [pipeline, alone, fed]
  print(f'Timing {len(variants)} variants in {settings.rounds} rounds...')
  time_in_rounds(variants, settings.rounds, settings.min_time)

  out['render'] = {
    'images': n,
    'image_size': config.image_size,
    'seconds': render_s,
    'images_per_s': n / render_s,
  }
  out['tfds_build'] = {
    'dataset': 'scfail_shapes/tiny',
    'images': built,
    'seconds': build_s,
    'images_per_s': built / build_s,
    'from_scratch': not settings.data_dir,
  }
  out['tfds_read'] = {
    'split': 'train',
    'images': len(train['image']),
    'seconds': read_s,
    'images_per_s': len(train['image']) / read_s,
  }
  out['variants'] = {
    'pipeline': pipeline.record(devices),
    'step': alone.record(devices),
    'fed_step': fed.record(devices),
  }
  out['ratios'] = {
    'pipeline_over_step': rate_ratio(pipeline, alone),
    'fed_step_over_step': rate_ratio(fed, alone),
  }
  out['load_average'] = {'start': load_start, 'end': list(os.getloadavg())}
  out['notes'] = [
    'The pipeline and the step are timed apart, each with every core; in '
    'a run they share the cores, which the fed step measures.'
  ]
  return out


def run_suite(settings: Settings) -> dict[str, Any]:
  """A real training run of the default config, timed as a user sees it.

  Trains `configs/baseline.py`'s CPU preset (the default model, batch and
  dataset) for `settings.run_steps` steps with `scfail.experiment.run`, in
  a temporary work directory, with one evaluation at the end. The dataset
  comes from TFDS's data directory (`settings.data_dir`, or TFDS's
  default), built first if it is missing; that time is reported apart.
  From the run's `metrics.jsonl`: images/s and the fraction of wall time
  the loop waited for input, per logged interval; the first interval,
  which holds the compile, is left out of the medians.
  """
  from scfail import data, experiment

  load_start = list(os.getloadavg())
  out: dict[str, Any] = {'suite': 'run', **environment()}
  out['settings'] = dataclasses.asdict(settings)
  config = model_config('default', settings)
  if settings.batch_size:
    config.batch_size = settings.batch_size
  config_steps = config.total_steps
  steps = settings.run_steps
  config.total_steps = steps
  config.log_every = max(1, steps // 12)
  config.eval_every = steps
  config.checkpoint_every = steps
  config.data_dir = settings.data_dir
  for field, value in settings.run_overrides.items():
    config[field] = value

  start = time.perf_counter()
  data.get_builder(config.dataset, config.data_dir or None)
  dataset_s = time.perf_counter() - start

  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    summary = experiment.run(config, workdir)
    run_s = time.perf_counter() - start
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      lines = [json.loads(line) for line in f]
  train = [m for m in lines if 'train/img_per_sec' in m]
  steady = train[1:] or train
  rates = [m['train/img_per_sec'] for m in steady]
  waits = [m['train/input_wait'] for m in steady]
  out['run'] = {
    'dataset': config.dataset,
    'batch': config.batch_size,
    'steps': steps,
    'log_every': config.log_every,
    'dataset_s': dataset_s,
    'run_s': run_s,
    'images_per_s': float(np.median(rates)),
    'images_per_s_per_device': float(np.median(rates)) / jax.device_count(),
    'first_interval_images_per_s': train[0]['train/img_per_sec'],
    'input_wait_fraction': float(np.median(waits)),
    'input_wait_fraction_max': float(max(waits)),
    'intervals': len(steady),
    'final': {
      k: summary[k]
      for k in ('eval/iid/shape_acc', 'eval/iid/color_acc')
      if k in summary
    },
  }
  out['memory_peak'] = peak_memory()
  out['load_average'] = {'start': load_start, 'end': list(os.getloadavg())}
  out['notes'] = [
    f'{steps} steps of the default config, not its {config_steps}: the '
    'rates settle within a few intervals.'
  ]
  return out


def format_run(result: dict[str, Any]) -> str:
  """The run suite's table."""
  r = result['run']
  mem = result['memory_peak']
  rows = [
    ('images/s (median of intervals)', f'{r["images_per_s"]:,.0f}'),
    ('images/s per device', f'{r["images_per_s_per_device"]:,.0f}'),
    (
      'first interval images/s (compile)',
      f'{r["first_interval_images_per_s"]:,.0f}',
    ),
    ('input wait, fraction of wall time', f'{r["input_wait_fraction"]:.4f}'),
    ('input wait, worst interval', f'{r["input_wait_fraction_max"]:.4f}'),
    ('run wall time, s', f'{r["run_s"]:.1f}'),
    ('dataset ready, s', f'{r["dataset_s"]:.1f}'),
    ('peak memory, MiB', f'{mem["bytes"] / 2**20:,.0f}'),
  ]
  rows += [(k, f'{v:.3f}') for k, v in r['final'].items()]
  return '\n\n'.join(
    [
      _header(result),
      f'{r["dataset"]}, batch {r["batch"]}, {r["steps"]} steps, '
      f'{r["intervals"]} intervals of {r["log_every"]} steps',
      _table(('figure', 'value'), rows),
      '\n'.join(f'Note: {n}' for n in result['notes']),
    ]
  )


# Reports.


def seeds_suite(settings: Settings, num_seeds: int) -> dict[str, Any]:
  """K seeds in one vmapped step against K steps of one seed each.

  Both sides do the same work: K seeds' training steps on K batches of the
  default model's batch size. The vmapped step is the one
  `config.num_parallel_seeds = K` runs (`scfail.experiment.run_seeds`).
  """
  out: dict[str, Any] = {'suite': 'seeds', **environment()}
  out['settings'] = {**dataclasses.asdict(settings), 'num_seeds': num_seeds}
  config = model_config('default', settings)
  batch, _ = batch_size('default', config, settings)
  single = jax_step(config, batch)

  model = single.model
  params = [
    train_lib.init_params(model, seed, config.image_size)
    for seed in range(num_seeds)
  ]
  labels = train_lib.freeze_labels(params[0], ())
  optimizer = train_lib.make_optimizer(config, labels)
  kwargs = train_lib.step_arguments(config, model, optimizer, labels)
  mesh = train_lib.make_mesh()
  replicated = NamedSharding(mesh, P())
  states = [
    jax.device_get(train_lib.create_train_state(p, optimizer)) for p in params
  ]
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *states)
  state = [jax.device_put(stacked, replicated)]
  one = random_batch(batch, config.image_size)
  batches = jax.device_put(
    {k: np.stack([v] * num_seeds) for k, v in one.items()},
    NamedSharding(mesh, P(None, 'data')),
  )
  seeds = jax.device_put(np.arange(num_seeds, dtype=np.int32), replicated)
  vstep = jax.jit(
    jax.vmap(lambda st, b, sd: train_lib.train_step(st, b, seed=sd, **kwargs)),
    in_shardings=(replicated, NamedSharding(mesh, P(None, 'data')), replicated),
    out_shardings=(replicated, replicated),
    donate_argnums=(0,),
  )
  start = time.perf_counter()
  compiled = vstep.lower(state[0], batches, seeds).compile()
  compile_s = time.perf_counter() - start

  def together(n: int) -> None:
    for _ in range(n):
      state[0], metrics = compiled(state[0], batches, seeds)
    jax.block_until_ready((state[0], metrics))

  def one_after_another(n: int) -> None:
    for _ in range(n):
      for _ in range(num_seeds):
        single.state[0], metrics = single.compiled(
          single.state[0], single.batch
        )
    jax.block_until_ready((single.state[0], metrics))

  images = batch * num_seeds
  variants = [
    Variant(f'{num_seeds} seeds vmapped', together, images=images),
    Variant(f'{num_seeds} seeds in turn', one_after_another, images=images),
  ]
  time_in_rounds(variants, settings.rounds, settings.min_time)
  out['variants'] = {v.name: v.record(jax.device_count()) for v in variants}
  out['compile_s'] = {'vmapped': compile_s, 'single': single.compile_s}
  out['ratios'] = {
    'vmapped / in turn, images/s': time_ratio(variants[1], variants[0]),
  }
  return out


def format_seeds(result: dict[str, Any]) -> str:
  rows = [
    (name, f'{r["images_per_s"]:,.0f}', f'{r["median_s"] * 1e3:.1f}')
    for name, r in result['variants'].items()
  ]
  return '\n'.join(
    [
      _header(result),
      _table(('variant', 'images/s', 'ms per unit'), rows),
      _table(
        ('ratio', 'median of rounds'),
        [(k, f'{v:.3f}') for k, v in result['ratios'].items()],
      ),
    ]
  )


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """Columns padded to their widths; the first left-aligned, others right."""
  cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

  def line(row: list[str]) -> str:
    first = row[0].ljust(widths[0])
    rest = (c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))
    return '  '.join([first, *rest])

  lines = [line(row) for row in cells]
  lines.insert(1, '  '.join('-' * w for w in widths))
  return '\n'.join(lines)


def _g(x: float) -> str:
  return f'{x / 1e9:.1f}'


def format_step(result: dict[str, Any]) -> str:
  """The step suite's tables: ratios, steps, matmuls, parity, notes."""
  parts = [_header(result)]
  best = result['ratios_best']
  parts.append(
    _table(
      ('ratio', 'median of rounds', 'best rounds'),
      [(k, f'{v:.3f}', f'{best[k]:.3f}') for k, v in result['ratios'].items()],
    )
  )
  rows = []
  for key, r in result['variants'].items():
    if key.startswith('matmul'):
      continue
    rows.append(
      (
        key,
        r['batch'],
        f'{r["images_per_s"]:.1f}',
        f'{r["images_per_s_per_device"]:.1f}',
        f'{r["median_s"] * 1e3:.1f}',
        f'{r.get("compile_s", r.get("first_step_s", float("nan"))):.1f}',
        _g(r['achieved_flops_per_s']),
        f'{100 * r["fraction_of_matmul_peak"]:.0f}%',
        f'{r["xla_over_counted_flops"]:.3f}'
        if 'xla_over_counted_flops' in r
        else '-',
        f'{r["xla_memory_per_device"]["step_bytes"] / 2**20:.1f}'
        if r.get('xla_memory_per_device')
        else '-',
      )
    )
  parts.append(
    _table(
      (
        'train step',
        'batch',
        'img/s',
        'img/s/dev',
        'ms',
        'compile s',
        'GFLOP/s',
        'of peak',
        'XLA/counted',
        'XLA MiB/dev',
      ),
      rows,
    )
  )
  mm = result['matmul']
  parts.append(
    _table(
      ('float32 matmul', 'GFLOP/s'),
      [(k, _g(v)) for k, v in mm['flops_per_s'].items()]
      + [('peak', _g(mm['peak_flops_per_s']))],
    )
  )
  rows = []
  for name, m in result['models'].items():
    p = m.get('parity', {})
    rows.append(
      (
        name,
        m['params'],
        p.get('params_torch', '-'),
        m['forward_flops_per_image'],
        p.get('forward_flops_torch', '-'),
        f'{p["max_logit_gap"]:.1e}' if p else '-',
      )
    )
  parts.append(
    _table(
      (
        'model',
        'params',
        'torch params',
        'fwd FLOPs/img',
        'torch fwd FLOPs',
        'logit gap',
      ),
      rows,
    )
  )
  mem = result['memory_peak']
  parts.append(
    f'Peak memory: {mem["bytes"] / 2**20:.0f} MiB ({mem["source"]}).'
  )
  parts.append('\n'.join(f'Note: {n}' for n in result['notes']))
  return '\n\n'.join(p for p in parts if p)


def format_data(result: dict[str, Any]) -> str:
  """The data suite's tables: ratios, then each stage's images/s."""
  parts = [_header(result)]
  parts.append(
    _table(
      ('ratio', 'value'),
      [(k, f'{v:.3g}') for k, v in result['ratios'].items()],
    )
  )
  v = result['variants']
  parts.append(
    _table(
      ('stage', 'images', 'img/s'),
      [
        (
          'render (sample_factors + render)',
          result['render']['images'],
          f'{result["render"]["images_per_s"]:.0f}',
        ),
        (
          'TFDS build of scfail_shapes/tiny',
          result['tfds_build']['images'],
          f'{result["tfds_build"]["images_per_s"]:.0f}',
        ),
        (
          'TFDS read of its train split (load_split)',
          result['tfds_read']['images'],
          f'{result["tfds_read"]["images_per_s"]:.0f}',
        ),
        ('tf.data train_batches', '-', f'{v["pipeline"]["images_per_s"]:.0f}'),
        ('train step alone', '-', f'{v["step"]["images_per_s"]:.0f}'),
        (
          'train step fed by tf.data',
          '-',
          f'{v["fed_step"]["images_per_s"]:.0f}',
        ),
      ],
    )
  )
  parts.append('\n'.join(f'Note: {n}' for n in result['notes']))
  return '\n\n'.join(p for p in parts if p)


def _header(result: dict[str, Any]) -> str:
  m, v = result['machine'], result['versions']
  libs = ', '.join(f'{k} {x}' for k, x in v.items())
  return (
    f'scfail.bench {result["suite"]}, {result["date"]}: {m["cpu"]}, '
    f'{m["cores"]} cores, {m["device_count"]} {m["backend"]} device(s); '
    f'{libs}'
  )


def write_json(result: dict[str, Any], path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(result, f, indent=2, sort_keys=True, default=str)


# Command line.

_OUT = flags.DEFINE_string(
  'out', '', 'JSON output path; default runs/bench/<suite>.json.'
)
_BATCH = flags.DEFINE_integer(
  'batch_size', 0, "Default model's global batch; 0: its config's."
)
_FULL_BATCH = flags.DEFINE_integer(
  'full_batch_size',
  0,
  f"Full model's global batch; 0: its config's ({CPU_FULL_BATCH} on CPU).",
)
_MODELS = flags.DEFINE_list(
  'models', list(MODELS), 'Models the step suite runs.'
)
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Alternating repetitions.')
_SEEDS = flags.DEFINE_integer(
  'parallel_seeds', 4, 'K of the seeds suite: seeds trained in one step.'
)
_MIN_TIME = flags.DEFINE_float(
  'min_time', 1.0, 'Seconds each variant runs per round.'
)
_MATMUL = flags.DEFINE_list(
  'matmul_sizes', ['1024', '2048'], 'Square matmul sizes of the peak.'
)
_TORCH = flags.DEFINE_bool('torch', True, 'Time the PyTorch peer.')
_TORCH_COMPILE = flags.DEFINE_bool(
  'torch_compile', True, 'Also time the peer under torch.compile.'
)
_RENDER = flags.DEFINE_integer('render_images', 2048, 'Images to render.')
_RUN_STEPS = flags.DEFINE_integer(
  'run_steps', 300, 'Training steps of the run suite.'
)
_DATA_DIR = flags.DEFINE_string(
  'data_dir',
  '',
  "TFDS data directory of the run suite ('': TFDS's default); the data "
  'suite builds into it instead of a new temporary directory.',
)
_REFERENCE = flags.DEFINE_string(
  'reference_model',
  '',
  'Another scfail/model.py whose Hybrid the step suite times beside the '
  'current one (before/after figures).',
)


def settings_from_flags() -> Settings:
  unknown = [m for m in _MODELS.value if m not in MODELS]
  if unknown:
    raise app.UsageError(f'--models: unknown {unknown}; use {MODELS}.')
  return Settings(
    batch_size=_BATCH.value,
    full_batch_size=_FULL_BATCH.value,
    models=tuple(_MODELS.value),
    rounds=_ROUNDS.value,
    min_time=_MIN_TIME.value,
    matmul_sizes=tuple(int(s) for s in _MATMUL.value),
    torch=_TORCH.value,
    torch_compile=_TORCH_COMPILE.value,
    render_images=_RENDER.value,
    reference_model=_REFERENCE.value,
    run_steps=_RUN_STEPS.value,
    data_dir=_DATA_DIR.value,
  )


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in SUITES:
    raise app.UsageError(
      f'Name one suite: python -m scfail.bench <{"|".join(SUITES)}> [flags]'
    )
  suite = argv[1]
  settings = settings_from_flags()
  out = _OUT.value or os.path.join('runs', 'bench', f'{suite}.json')
  results = {}
  if suite in ('step', 'all'):
    results['step'] = step_suite(settings)
    print('\n' + format_step(results['step']) + '\n', flush=True)
  if suite in ('data', 'all'):
    results['data'] = data_suite(settings)
    print('\n' + format_data(results['data']) + '\n', flush=True)
  if suite in ('seeds', 'all'):
    results['seeds'] = seeds_suite(settings, _SEEDS.value)
    print('\n' + format_seeds(results['seeds']) + '\n', flush=True)
  if suite in ('run', 'all'):
    results['run'] = run_suite(settings)
    print('\n' + format_run(results['run']) + '\n', flush=True)
  write_json(results[suite] if suite != 'all' else results, out)
  print(f'Wrote {out}')


if __name__ == '__main__':
  app.run(main)
