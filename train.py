"""Trains one method (noise2clean, noise2noise or consensus) from a config into a workdir.

  python train.py --config=configs/ct_quick.py --workdir=work_dirs/ct_quick/consensus \
      --config.loss.kind=consensus --config.loss.beta_r=0.5

Rerunning with the same workdir resumes from the latest checkpoint (or does nothing when the run is
finished); a workdir holding a different config is refused unless --allow_config_change is given.
When the run ends, the test split is scored against the paper's reference (eval_summary.json).

Several processes (machines, or GPUs of one machine) train one run together; each is started
with the same flags plus its coordinates (docs/multihost.md):

  python train.py --config=... --workdir=... \
      --coordinator_address=10.0.0.1:12345 --num_processes=2 --process_id=0   # and =1
"""

from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

from consensus_jax import distributed, errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, config.json and logs.")
_ALLOW = flags.DEFINE_bool("allow_config_change", False,
                           "Continue a run in --workdir although its stored config differs.")
distributed.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise errors.ConfigError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    distributed.initialize_from_flags()  # before any other JAX call; a no-op without flags
    from consensus_jax import evaluation, experiment

    experiment.fit(_CONFIG.value, _WORKDIR.value, allow_config_change=_ALLOW.value)
    # The checkpoint evaluate.py uses by default: the best by validation loss. Every process
    # restores it (orbax reads collectively); process 0 writes the summary.
    method, params, step, _ = evaluation.load_run(_WORKDIR.value)
    evaluation.evaluate_on_test(_CONFIG.value, method, params, Path(_WORKDIR.value), step)


if __name__ == "__main__":
    errors.run_absl(main)
