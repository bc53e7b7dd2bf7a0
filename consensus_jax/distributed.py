"""Joining several processes into one JAX runtime (``jax.distributed``) from command-line flags.

``define_flags`` adds ``--multihost``, ``--coordinator_address``, ``--num_processes``,
``--process_id``, ``--local_device_ids`` and ``--init_timeout_s`` to a program;
``initialize_from_flags`` then calls ``jax.distributed.initialize`` before any other JAX call:

* with ``--coordinator_address`` (and ``--num_processes``, ``--process_id``): explicitly, e.g.
  two processes on one machine or a cluster without JAX's auto-detection;
* with ``--multihost`` alone: JAX detects the cluster (SLURM, Open MPI, TPU pods, some
  Kubernetes setups);
* with neither: nothing, one process.

CPU collectives across processes use gloo, so multi-process runs also work without accelerators.
docs/multihost.md shows the launch recipes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
from absl import flags

from consensus_jax.errors import ConfigError

_CHECK = ("check that every process got the same --coordinator_address and --num_processes, "
          "that the process ids are 0 .. num_processes - 1 with none twice, that process 0 is "
          "running, and that its port is free and reachable from every process.")

def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the multi-process flags in ``flag_values``."""
    flags.DEFINE_bool("multihost", False,
                      "Join a multi-process run whose coordinates JAX detects from the cluster "
                      "environment (SLURM, Open MPI, TPU pods). Not needed with "
                      "--coordinator_address.", flag_values=flag_values)
    flags.DEFINE_string("coordinator_address", None,
                        "host:port of process 0's coordinator (every process passes the same); "
                        "needs --num_processes and --process_id.", flag_values=flag_values)
    flags.DEFINE_integer("num_processes", None, "Number of processes in the run (every process "
                         "passes the same).", lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes - 1 "
                         "(0 runs the coordinator and writes the logs).", lower_bound=0,
                         flag_values=flag_values)
    flags.DEFINE_list("local_device_ids", None, "Devices this process uses, e.g. 0,1 (default: "
                      "all it sees).", flag_values=flag_values)
    flags.DEFINE_integer("init_timeout_s", 300, "Seconds to wait for every process to join "
                         "before failing.", lower_bound=1, flag_values=flag_values)


def check_arguments(coordinator_address: str | None, num_processes: int | None,
                    process_id: int | None) -> None:
    """Raises ValueError unless the explicit coordinates are all given and consistent."""
    given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
             "--process_id": process_id}
    missing = [k for k, v in given.items() if v is None]
    if len(missing) not in (0, 3):
        raise ConfigError(f"{', '.join(missing)} missing: an explicit multi-process run needs "
                          "--coordinator_address, --num_processes and --process_id together "
                          "(or --multihost alone, for a cluster JAX detects).")
    if not missing:
        host, _, port = str(coordinator_address).rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--coordinator_address={coordinator_address!r} must be host:port, "
                              "e.g. 10.0.0.1:12345 (process 0's machine and a free port).")
        if not 0 <= process_id < num_processes:
            raise ConfigError(f"--process_id={process_id} must lie in 0 .. {num_processes - 1} "
                              f"(--num_processes={num_processes}).")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: list[int] | None = None,
               timeout_s: int = 300, auto: bool = False) -> bool:
    """Joins the multi-process runtime; returns whether it did (False: a one-process run).

    Raises RuntimeError with what to check when the processes do not all join in ``timeout_s``.
    """
    check_arguments(coordinator_address, num_processes, process_id)
    if coordinator_address is None and not auto:
        return False
    import jax

    # Without this, computations spanning CPU devices of several processes fail to compile.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # JAX ends a process whose peers disagree with a fatal error from its runtime (no Python
    # exception to catch), so say first what this process is joining and what to check.
    where = (f"as process {process_id} of {num_processes} through {coordinator_address}"
             if coordinator_address else "with coordinates from the cluster environment")
    print(f"Joining a multi-process run {where} (waiting up to {timeout_s} s for every process). "
          f"If it aborts now: {_CHECK}", file=sys.stderr, flush=True)
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   local_device_ids=local_device_ids,
                                   initialization_timeout=int(timeout_s))
    except Exception as e:  # jax raises RuntimeError/ValueError/XlaRuntimeError here
        raise ConfigError(f"Could not join the multi-process run {where} within {timeout_s} s: "
                          f"{e}\n{_CHECK}") from e
    if num_processes is not None:
        # The coordinator's count is the one that counts: a process started with another
        # --num_processes joins without complaint. Every process learns what every other one
        # was asked, so that all of them stop (none waits for a peer that left).
        from jax.experimental import multihost_utils

        asked = np.asarray(multihost_utils.process_allgather(
            np.asarray([num_processes, process_id], np.int32))).reshape(-1, 2)
        check_joined(num_processes, process_id, jax.process_count(), jax.process_index(),
                     [(int(n), int(i)) for n, i in asked])
    return True


def check_joined(num_processes: int, process_id: int, process_count: int, process_index: int,
                 asked: Sequence[tuple[int, int]] = ()) -> None:
    """Raises ConfigError unless the run this process joined is the one its flags asked for.

    Args:
      num_processes, process_id: this process's --num_processes and --process_id.
      process_count, process_index: what it joined (``jax.process_count()``, set by process 0's
        --num_processes, and ``jax.process_index()``).
      asked: (--num_processes, --process_id) of every process of the run, in process order.
    """
    counts = sorted({n for n, _ in asked} | {num_processes})
    if len(counts) > 1:
        each = ", ".join(f"process {i}: {n}" for n, i in asked)
        raise ConfigError(f"The processes of this run were started with different "
                          f"--num_processes ({each}); the run has {process_count} processes, the "
                          "number process 0 was given. Start every process again with the same "
                          "--num_processes: the number of processes you start.")
    if num_processes != process_count:
        raise ConfigError(f"--num_processes={num_processes}, but the run joined through the "
                          f"coordinator has {process_count} processes (process 0's "
                          f"--num_processes={process_count}). Start every process with the same "
                          "--num_processes.")
    if process_id != process_index:
        raise ConfigError(f"--process_id={process_id}, but JAX made this process number "
                          f"{process_index} of {process_count}. Give each process its own id in "
                          f"0 .. {process_count - 1}.")


def initialize_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> bool:
    """``initialize`` with the values of ``define_flags``'s flags."""
    f = flag_values
    ids = f.local_device_ids or []
    if not all(i.strip().isdigit() for i in ids):
        raise ConfigError(f"--local_device_ids={','.join(ids)} must be device numbers, e.g. 0,1.")
    device_ids = [int(i) for i in ids] or None
    return initialize(f.coordinator_address, f.num_processes, f.process_id, device_ids,
                      f.init_timeout_s, auto=f.multihost)
