"""The Flax ViT/CNN hybrid that names an object's shape and its color.

Parameter paths (what `config.freeze` patterns match):

  stem/conv_<i>/{kernel,bias}     the convolutional stem (or stem/patchify)
  embedding/{kernel,bias}         features to tokens
  pos_embedding                   learned position embedding
  cls_token                       only with pooling='cls'
  block_<i>/attention_norm/...    pre-norm of the attention sublayer
  block_<i>/attention/qkv/...     fused query, key and value projection
  block_<i>/attention/out/...     attention output projection
  block_<i>/mlp_norm/...          pre-norm of the MLP sublayer
  block_<i>/mlp/{hidden,out}/...  the MLP
  encoder_norm/...                final norm
  shape_head/..., color_head/...  the two classifiers

With `use_attention=False` no `attention_norm` or `attention` parameters
exist in any block.

Written for throughput (`python -m scfail.bench` measures it); each choice
computes the same function as the plain layer it replaces:

- Dense layers see their input flattened to [examples * tokens, features]:
  on 3-D inputs XLA's CPU backend transposed the gradients of every kernel
  before multiplying them.
- Attention folds the 1/sqrt(head_dim) scale into the queries and divides
  by the softmax's sum after multiplying by the values, on [.., head_dim]
  instead of [.., tokens] entries; logits and softmax stay float32.
- On CPU, the conv stem's 3x3 convolutions of stride 2 run as one matrix
  product over the nine strided views of their input; XLA's CPU
  convolutions with few channels, and their gradients, were 2-3x slower.
- The patchify stem runs as one matrix product over image patches
  (space to depth): a convolution kernel with 3 input channels leaves most
  of a vector unit idle (2x slower than the product on XLA's CPU backend;
  TPUs pad the 3 channels to 128).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

STEMS = ('conv', 'patchify')
POOLINGS = ('mean', 'cls')


def _dense(
  x: jax.Array, features: int, dtype: jnp.dtype, name: str
) -> jax.Array:
  """`nn.Dense(features, name=name)` over the last axis of x, as 2-D."""
  y = nn.Dense(features, dtype=dtype, name=name)(x.reshape(-1, x.shape[-1]))
  return y.reshape(*x.shape[:-1], features)


class Patchify(nn.Module):
  """A p x p convolution of stride p as one product over image patches.

  Same parameters (`kernel` [p, p, in, features], `bias`) and outputs as
  `nn.Conv(features, (p, p), strides=(p, p), padding='VALID')`.
  """

  features: int
  patch_size: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.patch_size
    batch, height, width, channels = x.shape
    kernel = self.param(
      'kernel', nn.initializers.lecun_normal(), (p, p, channels, self.features)
    )
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    rows, cols = height // p, width // p
    x = x[:, : rows * p, : cols * p].astype(self.dtype)
    x = x.reshape(batch, rows, p, cols, p, channels).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(batch * rows * cols, p * p * channels)
    y = x @ kernel.reshape(p * p * channels, -1).astype(self.dtype)
    y = y + bias.astype(self.dtype)
    return y.reshape(batch, rows, cols, self.features)


def strided_conv_as_product(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A 3x3 convolution of stride 2, SAME padding, as one matrix product.

  The nine strided views of the padded input, side by side on the channel
  axis, times the kernel flattened to [9 * in, out]: the same result as
  `lax.conv_general_dilated(x, kernel, (2, 2), 'SAME')` on NHWC inputs and
  HWIO kernels.
  """
  batch, height, width, channels = x.shape
  rows, cols = -(-height // 2), -(-width // 2)
  pad_h = max(2 * (rows - 1) + 3 - height, 0)
  pad_w = max(2 * (cols - 1) + 3 - width, 0)
  x = jnp.pad(
    x,
    (
      (0, 0),
      (pad_h // 2, pad_h - pad_h // 2),
      (pad_w // 2, pad_w - pad_w // 2),
      (0, 0),
    ),
  )
  views = [
    x[:, i : i + 2 * rows - 1 : 2, j : j + 2 * cols - 1 : 2]
    for i in range(3)
    for j in range(3)
  ]
  patches = jnp.concatenate(views, axis=-1).reshape(-1, 9 * channels)
  y = patches @ kernel.reshape(9 * channels, -1)
  return y.reshape(batch, rows, cols, -1)


class StridedConv(nn.Module):
  """A 3x3 convolution of stride 2 with SAME padding.

  Same parameters (`kernel` [3, 3, in, features], `bias`), initial values
  and outputs as `nn.Conv(features, (3, 3), strides=(2, 2),
  padding='SAME')`. On CPU it runs as `strided_conv_as_product`: XLA's CPU
  convolutions with few channels, and their gradients, took 2-3x as long
  as the product; elsewhere it stays a convolution, which GPUs and TPUs
  run well.
  """

  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    kernel = self.param(
      'kernel',
      nn.initializers.lecun_normal(),
      (3, 3, channels, self.features),
    )
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if jax.default_backend() == 'cpu':
      y = strided_conv_as_product(x, kernel)
    else:
      y = jax.lax.conv_general_dilated(
        x,
        kernel,
        (2, 2),
        'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      )
    return y + bias.astype(self.dtype)


class Stem(nn.Module):
  """Image to a grid of features.

  'conv': one 3x3 convolution of stride 2 per entry of `features`, each
  followed by GELU, so the grid is the image downsampled by
  2**len(features). 'patchify': one convolution of kernel and stride
  `patch_size` with `features[-1]` channels.
  """

  kind: str
  features: tuple[int, ...]
  patch_size: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.kind == 'patchify':
      p = self.patch_size
      return Patchify(self.features[-1], p, self.dtype, name='patchify')(x)
    for i, f in enumerate(self.features):
      x = StridedConv(f, self.dtype, name=f'conv_{i}')(x)
      x = nn.gelu(x)
    return x


class Attention(nn.Module):
  """Multi-head self-attention with one fused QKV projection."""

  num_heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, tokens, width = x.shape
    head_dim = width // self.num_heads
    qkv = _dense(x, 3 * width, self.dtype, 'qkv')
    qkv = qkv.reshape(batch, tokens, 3, self.num_heads, head_dim)
    if jax.default_backend() != 'cpu':
      # GPUs and TPUs have fused attention kernels behind this call.
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
      y = jax.nn.dot_product_attention(q, k, v).reshape(batch, tokens, width)
      return _dense(y, width, self.dtype, 'out')
    # On CPU, written out: batch axes first, as batched products take
    # them, and the softmax normalised after the product with the values.
    q, k, v = qkv.transpose(2, 0, 3, 1, 4)
    logits = jnp.einsum(
      'bnqd,bnkd->bnqk',
      q * head_dim**-0.5,
      k,
      preferred_element_type=jnp.float32,
    )
    # Softmax's shift does not change its value: no gradient flows there.
    logits = logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True))
    weights = jnp.exp(logits)
    y = jnp.einsum(
      'bnqk,bnkd->bnqd',
      weights.astype(v.dtype),
      v,
      preferred_element_type=jnp.float32,
    )
    y = (y / weights.sum(-1, keepdims=True)).astype(v.dtype)
    y = y.transpose(0, 2, 1, 3).reshape(batch, tokens, width)
    return _dense(y, width, self.dtype, 'out')


class Mlp(nn.Module):
  """Two dense layers with GELU between them."""

  hidden: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    x = _dense(x, self.hidden, self.dtype, 'hidden')
    x = nn.gelu(x)
    return _dense(x, width, self.dtype, 'out')


class Block(nn.Module):
  """A pre-norm encoder block: attention (optional), then MLP."""

  num_heads: int
  mlp_ratio: int
  use_attention: bool
  dropout: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.use_attention:
      y = nn.LayerNorm(dtype=self.dtype, name='attention_norm')(x)
      y = Attention(self.num_heads, self.dtype, name='attention')(y)
      x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.LayerNorm(dtype=self.dtype, name='mlp_norm')(x)
    y = Mlp(x.shape[-1] * self.mlp_ratio, self.dtype, name='mlp')(y)
    return x + nn.Dropout(self.dropout, deterministic=not train)(y)


class Hybrid(nn.Module):
  """Conv stem, token embedding, encoder blocks, shape and color heads.

  Takes uint8 or float images [batch, height, width, 3] with values in
  [0, 255] and returns float32 logits `{'shape': [batch, num_shapes],
  'color': [batch, num_colors]}`. Parameters are float32; `dtype` is the
  compute dtype (bfloat16 on accelerators).
  """

  num_shapes: int
  num_colors: int
  width: int = 128
  depth: int = 4
  num_heads: int = 4
  mlp_ratio: int = 4
  stem: str = 'conv'
  stem_features: tuple[int, ...] = (32, 64)
  patch_size: int = 4
  use_attention: bool = True
  pooling: str = 'mean'
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False):
    x = images.astype(self.dtype) * (2.0 / 255.0) - 1.0
    x = Stem(
      self.stem,
      tuple(self.stem_features),
      self.patch_size,
      self.dtype,
      name='stem',
    )(x)
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height * width, channels)
    x = _dense(x, self.width, self.dtype, 'embedding')
    pos = self.param(
      'pos_embedding',
      nn.initializers.normal(stddev=0.02),
      (1, height * width, self.width),
    )
    x = x + pos.astype(self.dtype)
    if self.pooling == 'cls':
      cls = self.param('cls_token', nn.initializers.zeros, (1, 1, self.width))
      cls = jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, self.width))
      x = jnp.concatenate([cls, x], axis=1)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)

    for i in range(self.depth):
      x = Block(
        self.num_heads,
        self.mlp_ratio,
        self.use_attention,
        self.dropout,
        self.dtype,
        name=f'block_{i}',
      )(x, train)
    x = nn.LayerNorm(dtype=self.dtype, name='encoder_norm')(x)
    x = x[:, 0] if self.pooling == 'cls' else x.mean(axis=1)

    shape = nn.Dense(self.num_shapes, dtype=self.dtype, name='shape_head')(x)
    color = nn.Dense(self.num_colors, dtype=self.dtype, name='color_head')(x)
    return {
      'shape': shape.astype(jnp.float32),
      'color': color.astype(jnp.float32),
    }


def grid_size(model: Hybrid, image_size: int) -> int:
  """Side of the token grid the stem makes of an `image_size` image."""
  if model.stem == 'patchify':
    return image_size // model.patch_size
  size = image_size
  for _ in model.stem_features:
    size = math.ceil(size / 2)
  return size


def forward_flops(model: Hybrid, image_size: int) -> int:
  """Multiply-add FLOPs (2 per MAC) of one image's forward pass.

  Counts convolutions, dense layers and attention's two matrix products;
  norms, activations and softmax are left out (a few percent at most).
  """
  flops = 0
  size, channels = image_size, 3
  if model.stem == 'patchify':
    size = image_size // model.patch_size
    channels_out = model.stem_features[-1]
    flops += 2 * size * size * model.patch_size**2 * channels * channels_out
    channels = channels_out
  else:
    for f in model.stem_features:
      size = math.ceil(size / 2)
      flops += 2 * size * size * 9 * channels * f
      channels = f
  tokens = size * size + (model.pooling == 'cls')
  w = model.width
  flops += 2 * size * size * channels * w
  per_block = 2 * tokens * w * w * model.mlp_ratio * 2
  if model.use_attention:
    per_block += 2 * tokens * w * 3 * w + 2 * tokens * w * w
    per_block += 2 * 2 * tokens * tokens * w
  flops += model.depth * per_block
  flops += 2 * w * (model.num_shapes + model.num_colors)
  return flops
