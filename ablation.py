"""Trains and evaluates a grid of loss settings over seeds and writes one comparison table.

  python ablation.py --config=configs/ct_quick.py --grid=loss_terms --seeds=0,1,2 \
      --root=work_dirs/ablation_ct --out=results/ablation_ct
  python ablation.py --config=configs/mri_quick.py --grid=mri_transfer --seeds=0,1,2 \
      --root=work_dirs/mri_methods --out=results/mri_knee_on_mni --test_data=mni

Takes train.py's multi-process flags (--coordinator_address, --num_processes, --process_id, ...).
"""

from absl import flags, logging
from ml_collections import config_flags

from consensus_jax import distributed, errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "Base experiment config.")
_GRID = flags.DEFINE_string("grid", "loss_terms", "Grid name in configs/ablation.py.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
_ROOT = flags.DEFINE_string("root", None, "Folder for the runs' workdirs.")
_OUT = flags.DEFINE_string("out", None, "Folder for ablation.md / ablation.json.")
_TEST_DATA = flags.DEFINE_string(
    "test_data", None, "Score every run on this preset's test split instead of its own (a "
    "transfer test, e.g. mni for runs trained on the MRI quick knees); prepare it first with "
    "python -m data_prep.<ct|mri> --config=<preset>. Finished runs are reused, never retrained.")
distributed.define_flags()
flags.mark_flags_as_required(["config", "root", "out"])


def main(argv):
    if len(argv) > 1:
        raise errors.ConfigError(f"Unexpected arguments: {argv[1:]}")
    seeds = _SEEDS.value
    if not seeds or not all(s.strip().isdigit() for s in seeds):
        raise errors.ConfigError(f"--seeds={','.join(seeds)}: training seeds are whole numbers "
                                 ">= 0 separated by commas, e.g. --seeds=0,1,2.")
    logging.set_verbosity(logging.WARNING)
    distributed.initialize_from_flags()  # several processes train each run together
    from configs import ablation as grids
    from consensus_jax import ablation

    ablation.run_grid(_CONFIG.value, grids.get_grid(_GRID.value),
                      [int(s) for s in seeds], _ROOT.value, _OUT.value,
                      test_data=_TEST_DATA.value)


if __name__ == "__main__":
    errors.run_absl(main)
