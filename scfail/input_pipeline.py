"""Streams training batches and benchmark sets onto the devices.

Training order is a pure function of the seed, the process and the step:
the batch of step t is drawn from the training mixture with a stateless
random stream keyed by (seed, process, t). A resumed run therefore sees
exactly the batches an uninterrupted one would, without replaying anything.
tf.data computes each step's example indices ahead of time; the images are
gathered from memory and placed on the devices by a background thread.

Evaluation reads a benchmark's examples once, splits them evenly over the
processes, and pads the last batch with masked examples, so that every
example is counted exactly once on any number of devices and processes.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator

import jax
import numpy as np
import tensorflow as tf

from scfail import benchmarks

Batch = dict[str, np.ndarray]


@dataclasses.dataclass
class TrainSource:
  """A process's training examples, grouped by shape-color pair."""

  images: np.ndarray
  shapes: np.ndarray
  colors: np.ndarray
  num_shapes: int
  num_colors: int

  def pair_ids(self) -> np.ndarray:
    return self.shapes * self.num_colors + self.colors

  def check_covers(self, probabilities: np.ndarray) -> None:
    """Raises if a pair the mixture draws has no training example."""
    counts = np.bincount(
      self.pair_ids(), minlength=self.num_shapes * self.num_colors
    ).reshape(self.num_shapes, self.num_colors)
    missing = np.argwhere((probabilities > 0) & (counts == 0))
    if missing.size:
      raise ValueError(
        f'The training split has no example of pairs (shape, color) '
        f'{[tuple(map(int, p)) for p in missing[:5]]}; use a larger dataset '
        'or fewer processes.'
      )


def train_indices(
  source: TrainSource,
  probabilities: np.ndarray,
  seed: int,
  local_batch_size: int,
  start_step: int,
  shard_index: int = 0,
) -> tf.data.Dataset:
  """tf.data stream of `(step, example indices)` from `start_step` on.

  The indices of step t are a pure function of (seed, shard_index, t).
  """
  source.check_covers(probabilities)
  pair_ids = source.pair_ids()
  order = np.argsort(pair_ids, kind='stable')
  counts = np.bincount(pair_ids, minlength=probabilities.size)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  cdf = np.cumsum(probabilities.reshape(-1))
  cdf = cdf / cdf[-1]

  order_t = tf.constant(order, tf.int64)
  counts_t = tf.constant(counts, tf.float64)
  starts_t = tf.constant(starts, tf.int64)
  cdf_t = tf.constant(cdf, tf.float64)
  last_pair = probabilities.size - 1
  stream = tf.constant(seed * 7919 + shard_index, tf.int64)

  def indices(step):
    u = tf.random.stateless_uniform(
      [local_batch_size, 2], seed=tf.stack([stream, step]), dtype=tf.float64
    )
    pair = tf.searchsorted(cdf_t, u[:, 0], side='right')
    pair = tf.minimum(pair, last_pair)
    within = tf.cast(tf.floor(u[:, 1] * tf.gather(counts_t, pair)), tf.int64)
    return step, tf.gather(order_t, tf.gather(starts_t, pair) + within)

  ds = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
  ds = ds.map(indices, num_parallel_calls=2, deterministic=True)
  return ds.prefetch(4)


def train_batches(
  source: TrainSource,
  probabilities: np.ndarray,
  seed: int,
  local_batch_size: int,
  start_step: int = 0,
  shard_index: int = 0,
) -> Iterator[tuple[int, Batch]]:
  """Yields `(step, batch)`: host NumPy batches of one input shard."""
  ds = train_indices(
    source,
    probabilities,
    seed,
    local_batch_size,
    start_step,
    shard_index,
  )
  for step, index in ds.as_numpy_iterator():
    yield (
      int(step),
      {
        'image': source.images[index],
        'shape': source.shapes[index].astype(np.int32),
        'color': source.colors[index].astype(np.int32),
      },
    )


def concat_streams(
  streams: list[Iterator[tuple[int, Batch]]],
) -> Iterator[tuple[int, Batch]]:
  """Joins the batches of several input shards, step by step, in order."""
  if len(streams) == 1:
    yield from streams[0]
    return
  for items in zip(*streams, strict=False):
    steps = {step for step, _ in items}
    assert len(steps) == 1, steps
    yield (
      items[0][0],
      {
        k: np.concatenate([batch[k] for _, batch in items]) for k in items[0][1]
      },
    )


def stack_streams(
  streams: list[Iterator[tuple[int, Batch]]],
) -> Iterator[tuple[int, Batch]]:
  """Stacks the batches of several seeds along a new leading axis."""
  for items in zip(*streams, strict=False):
    steps = {step for step, _ in items}
    assert len(steps) == 1, steps
    yield (
      items[0][0],
      {k: np.stack([batch[k] for _, batch in items]) for k in items[0][1]},
    )


def prefetch(iterator: Iterator, put: Callable, size: int = 2) -> Iterator:
  """Applies `put` (a host-to-device transfer) in a thread, `size` ahead."""
  buffer: queue.Queue = queue.Queue(maxsize=size)
  done = object()
  stop = threading.Event()

  def worker():
    try:
      for item in iterator:
        if stop.is_set():
          return
        buffer.put(put(item))
      buffer.put(done)
    except BaseException as e:  # Re-raised in the consumer.
      buffer.put(e)

  thread = threading.Thread(target=worker, daemon=True)
  thread.start()
  try:
    while True:
      item = buffer.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()


@dataclasses.dataclass
class EvalSet:
  """A benchmark's examples for this process, padded into whole batches.

  `batches` holds host arrays with a `mask` that is 1 for real examples and
  0 for padding; `num_examples` counts real examples over all processes.
  """

  benchmark: benchmarks.Benchmark
  batches: list[Batch]
  num_examples: int


def eval_set(
  benchmark: benchmarks.Benchmark,
  split: dict[str, np.ndarray],
  seen: np.ndarray,
  global_batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
  max_examples: int | None = None,
) -> EvalSet:
  """Selects a benchmark's examples and shards them over processes."""
  keep = benchmarks.pair_filter(benchmark, seen)
  index = np.nonzero(keep[split['shape'], split['color']])[0]
  if max_examples is not None:
    index = index[:max_examples]
  num_examples = index.size
  if num_examples == 0:
    raise ValueError(
      f'Benchmark {benchmark.name!r} has no example in split '
      f'{benchmark.split!r}; is the pair hold-out empty?'
    )
  local = np.array_split(index, process_count)[process_index]
  local_batch = global_batch_size // process_count
  per_process = -(-num_examples // process_count)
  num_batches = -(-per_process // local_batch)
  padded = num_batches * local_batch
  mask = np.zeros(padded, np.float32)
  mask[: local.size] = 1.0
  local = np.concatenate([local, np.zeros(padded - local.size, np.int64)])
  batches = []
  for b in range(num_batches):
    sl = slice(b * local_batch, (b + 1) * local_batch)
    idx = local[sl]
    batch = {
      'image': split['image'][idx],
      'shape': split['shape'][idx].astype(np.int32),
      'color': split['color'][idx].astype(np.int32),
      'mask': mask[sl],
    }
    batches.append(batch)
  return EvalSet(benchmark, batches, num_examples)


def make_global(
  batch: Batch, sharding: jax.sharding.Sharding
) -> dict[str, jax.Array]:
  """Assembles process-local arrays into global arrays sharded on `data`."""
  return {
    k: jax.make_array_from_process_local_data(sharding, v)
    for k, v in batch.items()
  }
