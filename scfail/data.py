"""The `scfail_shapes` TFDS dataset and loading of any split into memory.

Importing this module registers `scfail_shapes`, so that
`tfds.load('scfail_shapes/32px')` works. Generation is procedural and
offline (see `scfail.render`): a split is a pure function of its builder
config's seed. Every split holds every shape-color pair in equal number;
which pairs the study calls seen is decided later, by `scfail.benchmarks`.

Splits: `train`, `validation`, `test`, and one test split per shift,
`test_texture`, `test_lighting`, `test_scale`, `test_background` and
`test_grayscale`. Every example carries `image`, its labels `shape` and
`color`, and its factor values.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import zlib

import numpy as np

# TensorFlow is only the input pipeline's engine: keep it off accelerators
# before anything else imports it.
import tensorflow as tf

tf.config.set_visible_devices([], 'GPU')

import tensorflow_datasets as tfds  # noqa: E402

from scfail import render  # noqa: E402

if not sys.stderr.isatty():
  tfds.disable_progress_bar()

SHIFT_SPLITS = {
  f'test_{shift}': shift for shift in render.SHIFTS if shift != 'none'
}
_CHUNK = 500


class ScfailShapesConfig(tfds.core.BuilderConfig):
  """Resolution, split sizes and seed of one `scfail_shapes` variant."""

  def __init__(
    self,
    *,
    image_size: int,
    num_train: int,
    num_validation: int,
    num_test: int,
    num_shift: int,
    seed: int = 0,
    **kwargs,
  ):
    super().__init__(**kwargs)
    self.image_size = image_size
    self.num_train = num_train
    self.num_validation = num_validation
    self.num_test = num_test
    self.num_shift = num_shift
    self.seed = seed

  def split_sizes(self) -> dict[str, int]:
    sizes = {
      'train': self.num_train,
      'validation': self.num_validation,
      'test': self.num_test,
    }
    sizes.update({name: self.num_shift for name in SHIFT_SPLITS})
    return sizes


class ScfailShapes(tfds.core.GeneratorBasedBuilder):
  """One colored shape on a background; labels `shape` and `color`."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Eight shapes, eight colors, five shifts.'}
  BUILDER_CONFIGS = [
    ScfailShapesConfig(
      name='32px',
      description='32x32 images; the CPU-sized default.',
      image_size=32,
      num_train=24_000,
      num_validation=2_048,
      num_test=4_096,
      num_shift=2_048,
    ),
    ScfailShapesConfig(
      name='64px',
      description='64x64 images, for accelerators.',
      image_size=64,
      num_train=96_000,
      num_validation=4_096,
      num_test=8_192,
      num_shift=4_096,
    ),
    ScfailShapesConfig(
      name='tiny',
      description='A few hundred 32x32 images, for tests and notebooks.',
      image_size=32,
      num_train=1_024,
      num_validation=256,
      num_test=512,
      num_shift=256,
    ),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__.splitlines()[0],
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(
            shape=(size, size, 3), encoding_format='png'
          ),
          'shape': tfds.features.ClassLabel(names=render.SHAPES),
          'color': tfds.features.ClassLabel(names=render.COLORS),
          'x': tf.float32,
          'y': tf.float32,
          'scale': tf.float32,
          'rotation': tf.float32,
          'hue': tf.float32,
          'saturation': tf.float32,
          'value': tf.float32,
          'background': tfds.features.Tensor(shape=(3,), dtype=tf.float32),
          'texture': tfds.features.ClassLabel(names=render.TEXTURES),
          'brightness': tf.float32,
          'cast': tfds.features.Tensor(shape=(3,), dtype=tf.float32),
          'clutter': tf.bool,
          'grayscale': tf.bool,
        }
      ),
      supervised_keys=None,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is generated; nothing is downloaded.
    sizes = self.builder_config.split_sizes()
    return {
      name: self._generate_examples(name, size) for name, size in sizes.items()
    }

  def _generate_examples(self, split: str, num_examples: int):
    config = self.builder_config
    for start, factors, images in generate_split(
      split, num_examples, config.image_size, config.seed
    ):
      for i in range(images.shape[0]):
        example = {
          key: value[i] for key, value in factors.items() if key in _FACTORS
        }
        example['image'] = images[i]
        yield start + i, example


_FACTORS = (
  'shape',
  'color',
  'x',
  'y',
  'scale',
  'rotation',
  'hue',
  'saturation',
  'value',
  'background',
  'texture',
  'brightness',
  'cast',
  'clutter',
  'grayscale',
)


def generate_split(split: str, num_examples: int, image_size: int, seed: int):
  """Yields `(start, factors, images)` chunks of one split, in order.

  The split's content is a pure function of its name, size, resolution and
  seed. Pairs are balanced: each of the 64 shape-color pairs appears
  `num_examples / 64` times (up to rounding).
  """
  split_id = zlib.crc32(split.encode())
  shift = SHIFT_SPLITS.get(split, 'none')
  num_pairs = len(render.SHAPES) * len(render.COLORS)
  order_rng = np.random.default_rng([seed, split_id])
  pairs = order_rng.permutation(np.arange(num_examples) % num_pairs)
  for start in range(0, num_examples, _CHUNK):
    chunk = pairs[start : start + _CHUNK]
    rng = np.random.default_rng([seed, split_id, start])
    factors = render.sample_factors(
      rng, chunk // len(render.COLORS), chunk % len(render.COLORS), shift
    )
    images = render.render(
      factors, image_size, noise_seed=int(rng.integers(2**31))
    )
    factors = {
      key: (
        value.astype(np.float32)
        if value.dtype == np.float64
        else value.astype(np.int64)
        if value.dtype.kind == 'i'
        else value
      )
      for key, value in factors.items()
    }
    yield start, factors, images


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the study needs to know of a dataset: its labels and splits.

  Attributes:
    name: the TFDS name, with its config (`scfail_shapes/32px`).
    shape_key, color_key: the features that hold the two labels.
    num_shapes, num_colors: their numbers of classes.
    image_size: side of the square images, in pixels.
    shape_names, color_names: class names, for plots.
    splits: study split name (`train`, `test`, `test_texture`, ...) to the
      TFDS split expression that holds it.
  """

  name: str
  shape_key: str
  color_key: str
  num_shapes: int
  num_colors: int
  image_size: int
  shape_names: tuple[str, ...]
  color_names: tuple[str, ...]
  splits: dict[str, str]


# Real datasets with one TFDS split: the study's splits are slices of it.
_SLICED_SPLITS = {
  'train': 'train[:80%]',
  'validation': 'train[80%:90%]',
  'test': 'train[90%:]',
}
_LABEL_KEYS = {'shapes3d': ('label_shape', 'label_object_hue')}


def dataset_spec(builder: tfds.core.DatasetBuilder) -> DatasetSpec:
  """The labels and splits of a supported dataset."""
  info = builder.info
  family = info.name
  shape_key, color_key = _LABEL_KEYS.get(family, ('shape', 'color'))
  if family == 'scfail_shapes':
    splits = {name: name for name in builder.builder_config.split_sizes()}
  else:
    splits = dict(_SLICED_SPLITS)
  return DatasetSpec(
    name=info.full_name,
    shape_key=shape_key,
    color_key=color_key,
    num_shapes=info.features[shape_key].num_classes,
    num_colors=info.features[color_key].num_classes,
    image_size=info.features['image'].shape[0],
    shape_names=tuple(info.features[shape_key].names),
    color_names=tuple(info.features[color_key].names),
    splits=splits,
  )


def data_dir_or_default(data_dir: str | None) -> str:
  """The TFDS data directory a dataset is read from and built into."""
  return data_dir or os.environ.get(
    'TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets')
  )


def get_builder(
  name: str, data_dir: str | None, prepare: bool = True
) -> tfds.core.DatasetBuilder:
  """Returns the TFDS builder of `name`, built first if it is ours.

  Raises:
    ValueError: the dataset is unknown, or is not `scfail_shapes` and its
      files are missing (nothing can be downloaded at run time).
  """
  data_dir = data_dir_or_default(data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # TFDS raises several kinds here.
    raise ValueError(
      f'--config.dataset={name!r} is not a TFDS dataset this machine knows '
      f'({type(e).__name__}: {str(e).splitlines()[0]}); use '
      "'scfail_shapes/32px', 'scfail_shapes/64px', 'scfail_shapes/tiny' or "
      "'shapes3d'."
    ) from None
  if builder.info.name == 'scfail_shapes':
    if not builder.is_prepared() and prepare:
      builder.download_and_prepare()
    return builder
  try:
    # Fails at once when the files are missing; reads nothing.
    builder.as_dataset(split='train')
  except Exception:  # TFDS raises AssertionError or a file error here.
    raise ValueError(
      f'--config.dataset={name!r}: its files are not in the TFDS data '
      f'directory {data_dir!r}. Download and prepare it there on a machine '
      'with internet access (tfds build), or point --config.data_dir or '
      'TFDS_DATA_DIR at a directory that holds it.'
    ) from None
  return builder


def load_split(
  builder: tfds.core.DatasetBuilder,
  split: str,
  keys: tuple[str, ...],
) -> dict[str, np.ndarray]:
  """Reads the `keys` of a whole split into NumPy arrays, in file order."""
  ds = builder.as_dataset(split=split, shuffle_files=False)
  ds = ds.map(
    lambda ex: {k: ex[k] for k in keys},
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )
  ds = ds.batch(4096).prefetch(2)
  parts = list(tfds.as_numpy(ds))
  if not parts:
    raise ValueError(f'Split {split!r} of {builder.info.full_name} is empty.')
  return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def load_study_split(
  builder: tfds.core.DatasetBuilder, spec: DatasetSpec, split: str
) -> dict[str, np.ndarray]:
  """A study split as `image`, `shape` and `color` arrays.

  Raises:
    ValueError: the dataset has no such split.
  """
  if split not in spec.splits:
    raise ValueError(
      f'{spec.name} has no {split!r} split; its splits are '
      f'{", ".join(spec.splits)}.'
    )
  arrays = load_split(
    builder, spec.splits[split], ('image', spec.shape_key, spec.color_key)
  )
  return {
    'image': arrays['image'],
    'shape': arrays[spec.shape_key].astype(np.int64),
    'color': arrays[spec.color_key].astype(np.int64),
  }
