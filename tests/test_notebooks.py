"""The notebooks, executed top to bottom by a real kernel on tiny configs.

The kernel is this interpreter's (`sys.executable`, whose ipykernel is
installed with the test dependencies), started from a kernel spec written
into a temporary folder, so that no other Jupyter installation is used. It
inherits this process's environment, 8 fake CPU devices included.
"""

import glob
import json
import os
import sys

import ml_collections
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from scfail import experiment
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, 'notebooks')
KERNEL = 'scfail-test-python'
CELL_TIMEOUT_S = 300


def set_parameters(nb: nbformat.NotebookNode, **values) -> None:
  """Replaces `NAME = ...` lines of the cell tagged `parameters`."""
  (cell,) = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
  lines = cell.source.splitlines()
  for name, value in values.items():
    found = [i for i, line in enumerate(lines) if line.startswith(f'{name} =')]
    assert len(found) == 1, f'{name} is not a parameter of the notebook'
    lines[found[0]] = f'{name} = {value!r}'
  cell.source = '\n'.join(lines)


def execute(name: str, tmp_path, **parameters) -> nbformat.NotebookNode:
  """Runs notebooks/<name> with `parameters`; raises if a cell fails."""
  nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  for cell in nb.cells:
    assert not cell.get('outputs'), f'{name} is stored with outputs'
  set_parameters(nb, **parameters)

  spec_dir = tmp_path / 'kernels' / KERNEL
  spec_dir.mkdir(parents=True)
  (spec_dir / 'kernel.json').write_text(
    json.dumps(
      {
        'argv': [
          sys.executable,
          '-m',
          'ipykernel_launcher',
          '-f',
          '{connection_file}',
        ],
        'display_name': 'scfail tests',
        'language': 'python',
      }
    )
  )
  kernel_specs = KernelSpecManager(
    kernel_dirs=[str(tmp_path / 'kernels')], ensure_native_kernel=False
  )
  manager = KernelManager(kernel_name=KERNEL, kernel_spec_manager=kernel_specs)
  client = NotebookClient(
    nb,
    km=manager,
    timeout=CELL_TIMEOUT_S,
    # The kernel starts where a person opens the notebook.
    resources={'metadata': {'path': NOTEBOOKS}},
  )
  client.execute()
  return nb


def outputs(nb: nbformat.NotebookNode, mime: str) -> list[str]:
  return [
    out['data'][mime]
    for cell in nb.cells
    for out in cell.get('outputs', [])
    if mime in out.get('data', {})
  ]


def test_quickstart(tfds_dir, tmp_path):
  workdir = str(tmp_path / 'quickstart')
  nb = execute(
    'quickstart.ipynb',
    tmp_path,
    TOTAL_STEPS=6,
    WORKDIR=workdir,
    DATA_DIR=tfds_dir,
    BATCH_SIZE=16,
    MODEL_WIDTH=32,
    MODEL_DEPTH=1,
    EVAL_MAX_EXAMPLES=64,
  )

  summaries = {}
  for variant in ('baseline', 'frozen_embeddings'):
    with open(os.path.join(workdir, variant, 'seed_0', 'summary.json')) as f:
      summaries[variant] = json.load(f)
  assert summaries['baseline']['frozen'] == []
  assert 'pos_embedding' in summaries['frozen_embeddings']['frozen']
  assert len(glob.glob(os.path.join(workdir, 'samples', '*.png'))) == 8

  tables = outputs(nb, 'text/markdown')
  assert any('| metric | baseline | frozen_embeddings |' in t for t in tables)
  # 8 benchmark grids, 3 curve figures (live ones are updated in place),
  # confusion and CZSL figures, 8 grids of mistakes.
  assert len(outputs(nb, 'image/png')) >= 8 + 3 + 2 + 8


@pytest.fixture
def tiny_sweep(tfds_dir, tmp_path) -> str:
  """Two variants, one seed each, of the tiny config."""
  config = tiny_config(tfds_dir)
  config.seeds = (0,)
  config.variants = ml_collections.ConfigDict(
    {'baseline': {}, 'no_attention': {'model': {'use_attention': False}}}
  )
  workdir = str(tmp_path / 'sweep')
  experiment.run_sweep(config, workdir)
  return workdir


def test_ablation_report(tiny_sweep, tfds_dir, tmp_path):
  nb = execute(
    'ablation_report.ipynb',
    tmp_path,
    SWEEP_DIR=tiny_sweep,
    DATA_DIR=tfds_dir,
    PER_BENCHMARK=4,
  )
  report_dir = os.path.join(tiny_sweep, 'report')
  assert os.path.exists(os.path.join(report_dir, 'report.md'))
  for variant in ('baseline', 'no_attention'):
    grids = glob.glob(os.path.join(report_dir, f'mistakes_{variant}', '*.png'))
    assert len(grids) == 8, variant
  # Figure 1 and the appendix figure, the curves, two confusion figures,
  # 16 grids of mistakes, the CZSL curves.
  assert len(outputs(nb, 'image/png')) >= 2 + 1 + 2 + 16 + 1
