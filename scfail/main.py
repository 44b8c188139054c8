"""Runs a config: one training run, or a whole sweep and its report.

python -m scfail.main --config=configs/ablate.py [--workdir=DIR]
  [--config.<field>=<value> ...]
"""

from __future__ import annotations

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'A configs/*.py file, optionally with :<preset>.'
)
_WORKDIR = flags.DEFINE_string(
  'workdir', None, 'Where runs are written; default runs/<config name>.'
)
_OVERWRITE = flags.DEFINE_bool(
  'overwrite',
  False,
  'Allow a workdir that holds a run of a different config.',
)
_COORDINATOR = flags.DEFINE_string(
  'coordinator_address',
  None,
  'host:port of process 0, for several processes (not needed on TPU pods).',
)
_NUM_PROCESSES = flags.DEFINE_integer(
  'num_processes', None, 'How many processes take part.'
)
_PROCESS_ID = flags.DEFINE_integer(
  'process_id', None, "This process's index in [0, --num_processes)."
)
_DISTRIBUTED_TIMEOUT = flags.DEFINE_integer(
  'distributed_timeout', 300, 'Seconds to wait for every process to join.'
)
flags.mark_flags_as_required(['config'])


def default_workdir(config_arg: str) -> str:
  """runs/<config file stem>[_<preset>], e.g. runs/ablate_full."""
  path, _, preset = config_arg.partition(':')
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join('runs', f'{name}_{preset}' if preset else name)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from scfail import distributed, experiment

  experiment.quiet_library_logs()

  try:
    distributed.initialize(
      _COORDINATOR.value,
      _NUM_PROCESSES.value,
      _PROCESS_ID.value,
      _DISTRIBUTED_TIMEOUT.value,
    )
  except distributed.DistributedError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  import jax

  from scfail import config_lib

  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)

  config = _CONFIG.value
  workdir = _WORKDIR.value or default_workdir(
    config_flags.get_config_filename(flags.FLAGS['config'])
  )
  logging.info(
    'Running on %s; writing to %s.', experiment.devices_summary(), workdir
  )
  try:
    if experiment.is_sweep(config):
      experiment.run_sweep(config, workdir, _OVERWRITE.value)
      if jax.process_index() == 0:
        from scfail import report

        logging.info('Report: %s', report.write_report(workdir))
    else:
      summary = experiment.run(config, workdir, _OVERWRITE.value)
      logging.info(
        'Finished: %s',
        '  '.join(
          f'{k[5:]} {v:.3f}'
          for k, v in summary.items()
          if k.startswith('eval/') and isinstance(v, float)
        ),
      )
  except (config_lib.ConfigError, experiment.TrainingDiverged) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


def _unknown_field_message(error: Exception, argv: list[str]) -> str:
  """One line naming the override whose field does not exist."""
  text = str(error.args[0] if error.args else error)
  hint = re.search(r'Did you mean \W*(\w+)', text)
  text = re.sub(r'\\[nt]|Did you mean.*', ' ', text, flags=re.S)
  names = re.findall(r'[A-Za-z_]\w*', text)
  name = names[0] if names else text
  hint = f' Did you mean {hint.group(1)!r}?' if hint else ''
  for arg in argv:
    if arg.startswith('--config.'):
      path = arg[2:].split('=', 1)[0]
      if path.split('.')[-1] == name:
        return (
          f'error: --{path}: the config has no field {name!r}.{hint} The '
          'fields are those of scfail/config_lib.py base_config().'
        )
  return f'error: unknown config field {name!r}.{hint}'


if __name__ == '__main__':
  try:
    app.run(main)
  except (AttributeError, KeyError) as e:
    if not any(a.startswith('--config.') for a in sys.argv):
      raise
    print(_unknown_field_message(e, sys.argv), file=sys.stderr)
    sys.exit(1)
