"""The hybrid of `scfail.model` in PyTorch: a peer for throughput checks.

`scfail.bench` times this model's training step beside scfail's, so that
"how fast is scfail" has an answer that travels between machines: a ratio
to the same architecture, the same shapes and the same optimizer written
plainly in PyTorch. Nothing else in scfail imports this module, and PyTorch
is an optional extra (`pip install -e '.[bench]'`).

The peer mirrors `scfail.model.Hybrid` exactly: module and parameter names
follow the Flax paths (`block_0.attention.qkv.weight` for
`block_0/attention/qkv/kernel`), `load_flax_params` copies a Flax parameter
tree into it, and the two then compute the same logits. The details that
make that true: GELU is the tanh approximation (Flax's default), LayerNorm's
epsilon is 1e-6, and 'SAME' padding of a stride-2 convolution pads the
high side only when the input side is even, as XLA does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

try:
  import torch
  import torch.nn.functional as F
  from torch import nn
except ImportError as e:  # pragma: no cover - depends on the environment.
  raise ImportError(
    'scfail.torch_peer needs PyTorch, an optional extra: install it with '
    "`pip install -e '.[bench]'` (a pinned CPU build), or skip the peer "
    'with `python -m scfail.bench step --notorch`.'
  ) from e

import jax
import numpy as np

from scfail import model as model_lib
from scfail import train as train_lib

LAYER_NORM_EPS = 1e-6  # flax.linen.LayerNorm's default.


def _gelu(x: torch.Tensor) -> torch.Tensor:
  return F.gelu(x, approximate='tanh')


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """XLA's 'SAME' padding of one side: (low, high)."""
  out = math.ceil(size / stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class Stem(nn.Module):
  """Image (NCHW) to a grid of features, as `scfail.model.Stem`."""

  def __init__(
    self,
    kind: str,
    features: tuple[int, ...],
    patch_size: int,
    image_size: int,
  ):
    super().__init__()
    self.kind = kind
    self.paddings: list[tuple[int, int]] = []
    if kind == 'patchify':
      self.patchify = nn.Conv2d(3, features[-1], patch_size, stride=patch_size)
      return
    channels, size = 3, image_size
    for i, f in enumerate(features):
      low, high = _same_padding(size, 3, 2)
      self.paddings.append((low, high))
      # Symmetric padding goes into the convolution; XLA's uneven 'SAME'
      # padding needs an explicit pad first.
      pad = low if low == high else 0
      self.add_module(f'conv_{i}', nn.Conv2d(channels, f, 3, 2, pad))
      channels, size = f, math.ceil(size / 2)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.kind == 'patchify':
      return self.patchify(x)
    for i, (low, high) in enumerate(self.paddings):
      if low != high:
        x = F.pad(x, (low, high, low, high))
      x = _gelu(getattr(self, f'conv_{i}')(x))
    return x


class Attention(nn.Module):
  """Multi-head self-attention with one fused QKV projection."""

  def __init__(self, width: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.qkv = nn.Linear(width, 3 * width)
    self.out = nn.Linear(width, width)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    batch, tokens, width = x.shape
    head_dim = width // self.num_heads
    qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    y = F.scaled_dot_product_attention(q, k, v)
    y = y.transpose(1, 2).reshape(batch, tokens, width)
    return self.out(y)


class Mlp(nn.Module):
  """Two dense layers with GELU between them."""

  def __init__(self, width: int, hidden: int):
    super().__init__()
    self.hidden = nn.Linear(width, hidden)
    self.out = nn.Linear(hidden, width)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.out(_gelu(self.hidden(x)))


class Block(nn.Module):
  """A pre-norm encoder block: attention (optional), then MLP."""

  def __init__(
    self,
    width: int,
    num_heads: int,
    mlp_ratio: int,
    use_attention: bool,
    dropout: float,
  ):
    super().__init__()
    self.use_attention = use_attention
    if use_attention:
      self.attention_norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
      self.attention = Attention(width, num_heads)
    self.mlp_norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
    self.mlp = Mlp(width, width * mlp_ratio)
    self.dropout = nn.Dropout(dropout)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.use_attention:
      x = x + self.dropout(self.attention(self.attention_norm(x)))
    return x + self.dropout(self.mlp(self.mlp_norm(x)))


class Hybrid(nn.Module):
  """`scfail.model.Hybrid` in PyTorch: uint8 NHWC images to two logits.

  Parameters are float32, as in Flax; the Flax model's compute `dtype` is
  left to the caller (see `make_train_step`'s `autocast`).
  """

  def __init__(self, flax_model: model_lib.Hybrid, image_size: int):
    super().__init__()
    m = flax_model
    self.pooling = m.pooling
    self.stem = Stem(m.stem, tuple(m.stem_features), m.patch_size, image_size)
    grid = model_lib.grid_size(m, image_size)
    self.embedding = nn.Linear(m.stem_features[-1], m.width)
    self.pos_embedding = nn.Parameter(
      torch.randn(1, grid * grid, m.width) * 0.02
    )
    if m.pooling == 'cls':
      self.cls_token = nn.Parameter(torch.zeros(1, 1, m.width))
    self.dropout = nn.Dropout(m.dropout)
    self.depth = m.depth
    for i in range(m.depth):
      self.add_module(
        f'block_{i}',
        Block(m.width, m.num_heads, m.mlp_ratio, m.use_attention, m.dropout),
      )
    self.encoder_norm = nn.LayerNorm(m.width, eps=LAYER_NORM_EPS)
    self.shape_head = nn.Linear(m.width, m.num_shapes)
    self.color_head = nn.Linear(m.width, m.num_colors)

  def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
    x = images.permute(0, 3, 1, 2).float() * (2.0 / 255.0) - 1.0
    x = self.stem(x)
    x = self.embedding(x.flatten(2).transpose(1, 2))
    x = x + self.pos_embedding
    if self.pooling == 'cls':
      x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    x = self.dropout(x)
    for i in range(self.depth):
      x = getattr(self, f'block_{i}')(x)
    x = self.encoder_norm(x)
    x = x[:, 0] if self.pooling == 'cls' else x.mean(dim=1)
    return {'shape': self.shape_head(x), 'color': self.color_head(x)}


def _flax_path(torch_name: str, module: nn.Module) -> str:
  """The Flax path of a PyTorch parameter: 'a.b.weight' to 'a/b/kernel'."""
  *parents, leaf = torch_name.split('.')
  owner = module.get_submodule('.'.join(parents)) if parents else module
  if leaf == 'weight':
    leaf = 'scale' if isinstance(owner, nn.LayerNorm) else 'kernel'
  return '/'.join([*parents, leaf])


def _to_torch_layout(value: np.ndarray, path: str) -> np.ndarray:
  if path.endswith('kernel') and value.ndim == 4:  # HWIO to OIHW.
    return value.transpose(3, 2, 0, 1)
  if path.endswith('kernel') and value.ndim == 2:  # (in, out) to (out, in).
    return value.T
  return value


def load_flax_params(module: Hybrid, params: Mapping[str, Any]) -> None:
  """Copies a Flax parameter tree of the same model into `module`.

  Raises:
    ValueError: the two models do not have the same parameters.
  """
  flat = {
    '/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(leaf)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  names = dict(module.named_parameters())
  expected = {_flax_path(name, module): name for name in names}
  if set(expected) != set(flat):
    raise ValueError(
      'The Flax and PyTorch models differ in their parameters: only in '
      f'Flax {sorted(set(flat) - set(expected))}, only in PyTorch '
      f'{sorted(set(expected) - set(flat))}.'
    )
  with torch.no_grad():
    for path, name in expected.items():
      value = _to_torch_layout(flat[path], path)
      names[name].copy_(torch.from_numpy(np.array(value)))


def count_params(module: nn.Module) -> int:
  """Number of parameter entries, as `scfail.train.count_params` counts."""
  return sum(p.numel() for p in module.parameters())


def _attention_flops(query_shape, key_shape, value_shape, *_, **__) -> int:
  from torch.utils import flop_counter

  return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def forward_flops(module: Hybrid, image_size: int, batch: int = 2) -> int:
  """FLOPs of one image's forward pass, as PyTorch's flop counter sees it.

  The counter counts the matrix products of convolutions, linear layers
  and attention (2 per multiply-add), as `scfail.model.forward_flops` does.
  Its table lacks the CPU kernel of `scaled_dot_product_attention`, which
  is added here with the formula it uses for the other kernels.
  """
  from torch.utils import flop_counter

  cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
  images = torch.zeros(batch, image_size, image_size, 3, dtype=torch.uint8)
  counter = flop_counter.FlopCounterMode(
    display=False, custom_mapping={cpu_attention: _attention_flops}
  )
  with counter, torch.no_grad():
    module(images)
  return counter.get_total_flops() // batch


def learning_rate(config: Any) -> Callable[[int], float]:
  """`scfail.train.learning_rate_schedule` as a table lookup by step."""
  schedule = train_lib.learning_rate_schedule(config)
  table = np.asarray(schedule(np.arange(config.total_steps + 1)))
  return lambda step: float(table[min(step, config.total_steps)])


def make_optimizer(module: nn.Module, config: Any) -> torch.optim.AdamW:
  """AdamW as `scfail.train.make_optimizer`: decay on kernels only.

  The fused CPU implementation of AdamW is used when this PyTorch has it,
  so that the peer is as fast as plain PyTorch can be.
  """
  decay, no_decay = [], []
  for name, p in module.named_parameters():
    is_kernel = _flax_path(name, module).endswith('kernel')
    (decay if is_kernel else no_decay).append(p)
  groups = [
    {'params': decay, 'weight_decay': config.weight_decay},
    {'params': no_decay, 'weight_decay': 0.0},
  ]
  kwargs = dict(lr=0.0, betas=(0.9, 0.999), eps=1e-8)
  try:
    return torch.optim.AdamW(groups, fused=True, **kwargs)
  except (RuntimeError, ValueError):
    return torch.optim.AdamW(groups, foreach=True, **kwargs)


def make_train_step(
  module: nn.Module, config: Any, autocast: bool = False
) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
  """One training step: the loss, metrics and update of `scfail.train`.

  Args:
    module: a `Hybrid`, or one wrapped by `torch.compile`.
    config: the run config (learning rate schedule, weight decay, gradient
      clipping, loss weights).
    autocast: compute the forward pass in bfloat16 where PyTorch's CPU
      autocast does (the peer of a Flax model with dtype bfloat16).

  Returns:
    A function of a batch (`image` uint8 NHWC, `shape`, `color` int64)
    that updates `module` in place and returns the step's metrics: losses,
    accuracies, the gradient's and the parameters' global norms.
  """
  optimizer = make_optimizer(module, config)
  lr = learning_rate(config)
  weights = dict(config.loss_weights)
  params = [p for p in module.parameters() if p.requires_grad]
  step = 0

  def train_step(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    nonlocal step
    module.train()
    with torch.autocast('cpu', torch.bfloat16, enabled=autocast):
      logits = module(batch['image'])
    logits = {h: v.float() for h, v in logits.items()}
    losses = {h: F.cross_entropy(logits[h], batch[h]) for h in weights}
    loss = sum(weights[h] * losses[h] for h in losses)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip > 0:
      grad_norm = nn.utils.clip_grad_norm_(params, config.grad_clip)
    else:
      grad_norm = nn.utils.get_total_norm([p.grad for p in params])
    for group in optimizer.param_groups:
      group['lr'] = lr(step)
    optimizer.step()
    step += 1
    with torch.no_grad():
      param_norm = torch.linalg.vector_norm(
        torch.stack(torch._foreach_norm(params))
      )
      return {
        'loss': loss.detach(),
        'shape_loss': losses['shape'].detach(),
        'color_loss': losses['color'].detach(),
        'shape_acc': (logits['shape'].argmax(-1) == batch['shape'])
        .float()
        .mean(),
        'color_acc': (logits['color'].argmax(-1) == batch['color'])
        .float()
        .mean(),
        'grad_norm': grad_norm,
        'param_norm': param_norm,
      }

  return train_step


def set_threads(num_threads: int | None = None) -> int:
  """Uses `num_threads` (default: the cores this process may run on)."""
  num_threads = num_threads or len(os.sched_getaffinity(0))
  torch.set_num_threads(num_threads)
  return num_threads
