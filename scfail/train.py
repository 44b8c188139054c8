"""Train state, freezing masks, the optimizer and the pure train step.

The train step is one pure function `(state, batch) -> (state, metrics)`.
`jit_train_step` compiles it over a `data` mesh of every device of every
process (batch sharded, state replicated and donated); `pmap_train_step`
runs the same function under `jax.pmap` with explicit gradient averaging.

Freezing: `config.freeze` holds regular expressions over parameter paths
such as `stem/conv_0/kernel`. Frozen parameters are labelled 'frozen' in an
Optax `multi_transform`, whose `set_to_zero` branch keeps no state; the step
differentiates only the trainable parameters, so no gradient is computed
for frozen ones (freezing the stem removes its backward pass), and frozen
values are carried over untouched, so they stay bit-identical.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from scfail import model as model_lib

Params = Any
Metrics = dict[str, jax.Array]
TRAINABLE, FROZEN = 'trainable', 'frozen'


@flax.struct.dataclass
class TrainState:
  """Everything a step changes: the step counter, parameters, optimizer."""

  step: jax.Array
  params: Params
  opt_state: optax.OptState


def build_model(
  config: ml_collections.ConfigDict, num_shapes: int, num_colors: int
) -> model_lib.Hybrid:
  """The hybrid described by `config.model`."""
  m = config.model
  return model_lib.Hybrid(
    num_shapes=num_shapes,
    num_colors=num_colors,
    width=m.width,
    depth=m.depth,
    num_heads=m.num_heads,
    mlp_ratio=m.mlp_ratio,
    stem=m.stem,
    stem_features=tuple(m.stem_features),
    patch_size=m.patch_size,
    use_attention=m.use_attention,
    pooling=m.pooling,
    dropout=m.dropout,
    dtype=jnp.dtype(m.dtype),
  )


def param_paths(params: Params) -> list[str]:
  """Every parameter's path, 'block_0/mlp/hidden/kernel' style, sorted."""
  return sorted(traverse_util.flatten_dict(params, sep='/'))


def freeze_labels(params: Params, patterns: Sequence[str]) -> Params:
  """Labels each parameter 'frozen' or 'trainable' by `patterns`.

  A parameter is frozen when any pattern matches its whole path.

  Raises:
    ValueError: a pattern is not a valid regular expression or matches no
      parameter; the message lists the parameter paths.
  """
  paths = param_paths(params)
  compiled = []
  for pattern in patterns:
    try:
      compiled.append(re.compile(pattern))
    except re.error as e:
      raise ValueError(
        f'config.freeze pattern {pattern!r} is not a valid regular '
        f'expression ({e}).'
      ) from None
  for pattern, regex in zip(patterns, compiled, strict=True):
    if not any(regex.fullmatch(p) for p in paths):
      raise ValueError(
        f'config.freeze pattern {pattern!r} matches no parameter; the '
        f'parameters are: {", ".join(paths)}'
      )
  flat = traverse_util.flatten_dict(params, sep='/')
  labels = {
    path: FROZEN if any(r.fullmatch(path) for r in compiled) else TRAINABLE
    for path in flat
  }
  return traverse_util.unflatten_dict(labels, sep='/')


def load_run_params(run_dir: str) -> dict[str, np.ndarray]:
  """The parameters of another run's newest checkpoint, by path.

  Raises:
    ValueError: `run_dir` holds no readable checkpoint.
  """
  import orbax.checkpoint as ocp

  directory = os.path.abspath(os.path.join(run_dir, 'checkpoints'))
  if not os.path.isdir(directory):
    raise ValueError(
      f'config.init_from={run_dir!r} holds no checkpoints/ directory; point '
      'it at a run directory of scfail.'
    )
  manager = ocp.CheckpointManager(directory)
  step = manager.latest_step()
  if step is None:
    raise ValueError(f'config.init_from={run_dir!r} holds no checkpoint.')
  # Restore onto one local device, whatever topology saved it.
  metadata = ocp.StandardCheckpointer().metadata(
    os.path.join(directory, str(step), 'default')
  )
  tree = getattr(metadata, 'item_metadata', metadata)
  tree = getattr(tree, 'tree', tree)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
    {'params': tree['params']},
  )
  restored = manager.restore(
    step,
    args=ocp.args.PyTreeRestore(
      item=target,
      restore_args=jax.tree.map(
        lambda _: ocp.ArrayRestoreArgs(sharding=device), target
      ),
      partial_restore=True,
    ),
  )
  manager.close()
  flat = traverse_util.flatten_dict(restored['params'], sep='/')
  return {k: np.asarray(v) for k, v in flat.items()}


def init_from(
  params: Params, source: dict[str, np.ndarray], patterns: Sequence[str]
) -> tuple[Params, list[str]]:
  """Copies the parameters whose paths match `patterns` from `source`.

  Returns:
    The new parameters and the sorted paths that were copied.

  Raises:
    ValueError: a pattern matches nothing, a matched parameter is missing
      from `source`, or its shape differs; the message names the path.
  """
  flat = traverse_util.flatten_dict(params, sep='/')
  regexes = [re.compile(p) for p in patterns]
  for pattern, regex in zip(patterns, regexes, strict=True):
    if not any(regex.fullmatch(path) for path in flat):
      raise ValueError(
        f'config.init_from_patterns entry {pattern!r} matches no parameter; '
        f'the parameters are: {", ".join(sorted(flat))}'
      )
  copied = []
  for path, value in flat.items():
    if not any(r.fullmatch(path) for r in regexes):
      continue
    if path not in source:
      raise ValueError(
        f'config.init_from: parameter {path!r} is not in the source run '
        '(a different architecture?); narrow config.init_from_patterns.'
      )
    if source[path].shape != value.shape:
      raise ValueError(
        f'config.init_from: parameter {path!r} has shape '
        f'{tuple(source[path].shape)} in the source run but '
        f'{tuple(value.shape)} here; narrow config.init_from_patterns or '
        'match the model config.'
      )
    flat[path] = jnp.asarray(source[path], value.dtype)
    copied.append(path)
  return traverse_util.unflatten_dict(flat, sep='/'), sorted(copied)


def learning_rate_schedule(
  config: ml_collections.ConfigDict,
) -> optax.Schedule:
  """Linear warm-up to `config.learning_rate`, then cosine decay to zero."""
  warmup = min(config.warmup_steps, max(config.total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=config.learning_rate,
    warmup_steps=warmup,
    decay_steps=max(config.total_steps, warmup + 1),
    end_value=0.0,
  )


def make_optimizer(
  config: ml_collections.ConfigDict, labels: Params
) -> optax.GradientTransformation:
  """AdamW on trainable parameters, nothing (and no state) on frozen ones.

  Weight decay applies to kernels only, not to biases, norms or
  embeddings of positions.
  """
  decay_mask = jax.tree_util.tree_map_with_path(
    lambda path, _: str(getattr(path[-1], 'key', '')) == 'kernel', labels
  )
  adamw = optax.adamw(
    learning_rate_schedule(config),
    b1=0.9,
    b2=0.999,
    weight_decay=config.weight_decay,
    mask=decay_mask,
  )
  if config.grad_clip > 0:
    adamw = optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw)
  return optax.multi_transform(
    {TRAINABLE: adamw, FROZEN: optax.set_to_zero()}, labels
  )


def init_params(model: nn.Module, seed: int, image_size: int) -> Params:
  """Initial parameters for `seed` (float32 whatever the compute dtype)."""
  images = jnp.zeros((1, image_size, image_size, 3), jnp.uint8)
  variables = model.init(jax.random.key(seed), images, train=False)
  return variables['params']


def create_train_state(
  params: Params, optimizer: optax.GradientTransformation
) -> TrainState:
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=optimizer.init(params),
  )


def _split(params: Params, labels: Params) -> tuple[dict, dict]:
  flat = traverse_util.flatten_dict(params, sep='/')
  flat_labels = traverse_util.flatten_dict(labels, sep='/')
  trainable = {k: v for k, v in flat.items() if flat_labels[k] == TRAINABLE}
  frozen = {k: v for k, v in flat.items() if flat_labels[k] == FROZEN}
  return trainable, frozen


def _merge(trainable: dict, frozen: dict) -> Params:
  return traverse_util.unflatten_dict({**trainable, **frozen}, sep='/')


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def step_arguments(
  config: ml_collections.ConfigDict,
  model: nn.Module,
  optimizer: optax.GradientTransformation,
  labels: Params,
) -> dict[str, Any]:
  """The keyword arguments of `train_step` that a run's config fixes.

  Everything but `seed` (and `axis_name` under pmap): bind them with
  `functools.partial(train_step, seed=..., **step_arguments(...))`.
  """
  return dict(
    model=model,
    optimizer=optimizer,
    labels=labels,
    schedule=learning_rate_schedule(config),
    loss_weights=dict(config.loss_weights),
  )


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  *,
  model: nn.Module,
  optimizer: optax.GradientTransformation,
  labels: Params,
  schedule: optax.Schedule,
  loss_weights: dict[str, float],
  seed: int,
  axis_name: str | None = None,
) -> tuple[TrainState, Metrics]:
  """One optimizer step on one (global, or per-device under pmap) batch."""
  rng = jax.random.fold_in(jax.random.key(seed), state.step)
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  trainable, frozen = _split(state.params, labels)

  def loss_fn(trainable):
    params = _merge(trainable, frozen)
    logits = model.apply(
      {'params': params}, batch['image'], train=True, rngs={'dropout': rng}
    )
    losses = {
      head: cross_entropy(logits[head], batch[head]).mean()
      for head in ('shape', 'color')
    }
    total = sum(loss_weights[h] * losses[h] for h in losses)
    return total, (losses, logits)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (losses, logits)), grads = grad_fn(trainable)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)

  # The optimizer sees the full tree; frozen leaves get zero gradients,
  # which are constants: nothing is differentiated for them.
  full_grads = _merge(grads, jax.tree.map(jnp.zeros_like, frozen))
  updates, opt_state = optimizer.update(
    full_grads, state.opt_state, state.params
  )
  new_params = optax.apply_updates(state.params, updates)
  new_trainable, _ = _split(new_params, labels)
  new_state = TrainState(
    step=state.step + 1,
    params=_merge(new_trainable, frozen),
    opt_state=opt_state,
  )

  metrics = {
    'loss': loss,
    'shape_loss': losses['shape'],
    'color_loss': losses['color'],
    'shape_acc': (logits['shape'].argmax(-1) == batch['shape']).mean(),
    'color_acc': (logits['color'].argmax(-1) == batch['color']).mean(),
  }
  if axis_name is not None:
    metrics = jax.lax.pmean(metrics, axis_name)
  metrics['learning_rate'] = schedule(state.step)
  metrics['grad_norm'] = optax.global_norm(grads)
  metrics['param_norm'] = optax.global_norm(new_state.params)
  return new_state, metrics


def make_mesh() -> Mesh:
  """A 1-D `data` mesh over every device of every process."""
  return Mesh(np.asarray(jax.devices()), ('data',))


def jit_train_step(step_fn: Callable, mesh: Mesh) -> Callable:
  """`step_fn` jitted with the batch sharded on `data`, state donated."""
  replicated = NamedSharding(mesh, P())
  sharded = NamedSharding(mesh, P('data'))
  return jax.jit(
    step_fn,
    in_shardings=(replicated, sharded),
    out_shardings=(replicated, replicated),
    donate_argnums=(0,),
  )


def pmap_train_step(step_fn: Callable) -> Callable:
  """`step_fn` under `jax.pmap` over local devices, gradients averaged."""
  return jax.pmap(
    functools.partial(step_fn, axis_name='data'),
    axis_name='data',
    donate_argnums=(0,),
  )


def replicate_for_pmap(tree: Any) -> Any:
  """One copy of `tree` on each local device, laid out as pmap expects."""
  n = jax.local_device_count()
  stacked = jax.tree.map(
    lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)),
    jax.device_get(tree),
  )
  return jax.pmap(lambda x: x)(stacked)


def eval_outputs(
  params: Params, batch: dict[str, jax.Array], *, model: nn.Module
) -> dict[str, jax.Array]:
  """Per-example log-probabilities of each head, for host-side metrics."""
  logits = model.apply({'params': params}, batch['image'], train=False)
  return {
    'shape_logp': jax.nn.log_softmax(logits['shape']),
    'color_logp': jax.nn.log_softmax(logits['color']),
  }


def count_params(params: Params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def state_size(tree: Any) -> int:
  """Number of array elements in a pytree (the optimizer state's size)."""
  return int(
    sum(
      np.prod(np.shape(x)) for x in jax.tree.leaves(tree) if hasattr(x, 'shape')
    )
  )
