"""Evaluates trained runs and the baselines on the test split: Tables 1-2 and Figs. 1-2.

  python evaluate.py --runs=work_dirs/ct_quick/consensus,work_dirs/ct_quick/noise2noise,\
work_dirs/ct_quick/noise2clean --out=results/ct_quick

Writes table.md, table.csv, results.json (per-slice values) and figure.png into --out; earlier
results there are kept under numbered names, never overwritten.
"""

from absl import flags, logging
from ml_collections import config_flags

from consensus_jax import errors

_RUNS = flags.DEFINE_list("runs", [], "Training workdirs to evaluate (comma separated).")
_OUT = flags.DEFINE_string("out", None, "Output folder for the table and figure.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config for the data when no --runs.")
_SLICE = flags.DEFINE_integer("figure_slice", 0, "Test slice shown in the figure.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", "best", "Which checkpoint of each run: best (lowest validation loss; the "
    "latest for runs without validation), latest, or a step number.")
_TRAJECTORY = flags.DEFINE_bool(
    "trajectory", False, "Instead of the table: the test metrics of every kept checkpoint of "
    "each run and of its best-validation checkpoint (trajectory.md, trajectory.json).")
_ZOOM = flags.DEFINE_list("zoom", [], "Inset box row,col,size in pixels (default: automatic).")
flags.mark_flags_as_required(["out"])


def main(argv):
    if len(argv) > 1:
        raise errors.ConfigError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    if _ZOOM.value and (len(_ZOOM.value) != 3 or not all(v.isdigit() for v in _ZOOM.value)):
        raise errors.ConfigError(f"--zoom takes row,col,size in pixels; got "
                                 f"{','.join(_ZOOM.value)}.")
    zoom = tuple(int(v) for v in _ZOOM.value) if _ZOOM.value else None
    from consensus_jax import evaluation

    if _TRAJECTORY.value:
        evaluation.trajectory(_RUNS.value, _OUT.value)
        return
    evaluation.evaluate(_RUNS.value, _OUT.value, _CONFIG.value, _SLICE.value, zoom,
                        checkpoint=_CHECKPOINT.value)


if __name__ == "__main__":
    errors.run_absl(main)
