"""Start-up of JAX's distributed runtime, the same way on every host.

On one host nothing happens. On a TPU VM pod slice, or on a cluster whose
scheduler JAX recognises, `jax.distributed.initialize()` finds its peers by
itself. Elsewhere (several GPU hosts, or several processes on localhost)
the coordinator address, the process count and this process's id are given
by flags or by the environment variables `SCFAIL_COORDINATOR_ADDRESS`,
`SCFAIL_NUM_PROCESSES` and `SCFAIL_PROCESS_ID`.
"""

from __future__ import annotations

import os
import socket
import time

import jax


class DistributedError(RuntimeError):
  """The processes could not form a group; the message says why."""


def _tpu_pod() -> bool:
  hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  return ',' in hosts or bool(os.environ.get('MEGASCALE_COORDINATOR_ADDRESS'))


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  timeout_seconds: int = 300,
) -> bool:
  """Joins the process group when the environment has several processes.

  Args:
    coordinator_address: `host:port` of process 0, reachable by all.
    num_processes: how many processes take part.
    process_id: this process's index, in [0, num_processes).
    timeout_seconds: how long to wait for every process to join.

  Returns:
    True when a distributed runtime was started.

  Raises:
    DistributedError: the arguments are incomplete or inconsistent, or the
      group did not form in time.
  """
  coordinator_address = coordinator_address or os.environ.get(
    'SCFAIL_COORDINATOR_ADDRESS'
  )
  if num_processes is None and os.environ.get('SCFAIL_NUM_PROCESSES'):
    num_processes = int(os.environ['SCFAIL_NUM_PROCESSES'])
  if process_id is None and os.environ.get('SCFAIL_PROCESS_ID'):
    process_id = int(os.environ['SCFAIL_PROCESS_ID'])

  given = [coordinator_address, num_processes, process_id]
  if all(v is None for v in given):
    if not _tpu_pod():
      return False
    _start(timeout_seconds=timeout_seconds)
    return True
  if any(v is None for v in given):
    raise DistributedError(
      'Give all three of --coordinator_address, --num_processes and '
      f'--process_id (got {coordinator_address!r}, {num_processes!r}, '
      f'{process_id!r}).'
    )
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise DistributedError(
      f'--process_id={process_id} must be in [0, --num_processes='
      f'{num_processes}).'
    )
  if num_processes == 1:
    return False
  if jax.config.jax_platforms in (None, '', 'cpu') and not _has_accelerator():
    # CPU processes reduce across hosts through gloo.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if process_id != 0:
    # The runtime aborts the process when it cannot reach the coordinator;
    # find out first, and say so in a line.
    _wait_for_coordinator(coordinator_address, timeout_seconds)
  _start(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
    timeout_seconds=timeout_seconds,
  )
  return True


def _wait_for_coordinator(address: str, timeout_seconds: int) -> None:
  """Returns once process 0 accepts connections at `address`."""
  host, _, port = address.rpartition(':')
  if not host or not port.isdigit():
    raise DistributedError(
      f'--coordinator_address={address!r} must be host:port, as in '
      '10.0.0.1:12355.'
    )
  deadline = time.monotonic() + timeout_seconds
  while True:
    try:
      socket.create_connection((host, int(port)), timeout=2).close()
      return
    except OSError as e:
      if time.monotonic() > deadline:
        raise DistributedError(
          f'Could not reach the coordinator (process 0) at {address} within '
          f'{timeout_seconds} s ({e.strerror or e}). Start process 0 with the '
          'same --coordinator_address, check that its port is open to this '
          'host, or raise --distributed_timeout.'
        ) from None
      time.sleep(0.5)


def _has_accelerator() -> bool:
  """Whether a GPU or TPU plugin is installed (without starting JAX)."""
  import importlib.util

  return any(
    importlib.util.find_spec(name) is not None
    for name in ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'libtpu')
  )


def _start(timeout_seconds: int, **kwargs) -> None:
  try:
    jax.distributed.initialize(initialization_timeout=timeout_seconds, **kwargs)
  except Exception as e:  # The runtime raises several kinds.
    where = kwargs.get('coordinator_address', 'the TPU pod coordinator')
    raise DistributedError(
      f'Could not join the process group through {where} within '
      f'{timeout_seconds} s ({type(e).__name__}: '
      f'{str(e).splitlines()[0] if str(e) else ""}). Start every process '
      'with the same --coordinator_address and --num_processes, and check '
      'that process 0 is reachable at that address.'
    ) from None
