"""MRI quick set trained 4,000 steps with the quick schedule (1e-3, half-cosine), label-free
validation every 100 steps, a checkpoint every 500 for the test trajectory.

Run (measured on the set before the noise recalibration: add --config.data.config=quick_snr100):
  python ablation.py --config=configs/mri_quick_long.py --grid=consensus --seeds=0 \
    --root=work_dirs/mri_long --out=results/mri_long_consensus
What keeps it from overfitting, one change at a time (grid mri_overfitting; the 2x set first:
python -m data_prep.mri --config=quick --config.extra_train_patients=8 --config.name=quick_train2x):
  python ablation.py --config=configs/mri_quick_long.py --grid=mri_overfitting --seeds=0 \
    --root=work_dirs/mri_long --out=results/mri_long_overfitting
Results (the run diverges; what validation selects; what prevents it): docs/EXPERIMENTS.md
("MRI quick at 4,000 steps").
"""

from configs import mri_quick


def get_config():
    config = mri_quick.get_config()
    config.train.num_steps = 4000
    config.train.eval_every_steps = 100
    config.train.log_every_steps = 100
    config.train.checkpoint_every_steps = 500
    config.train.keep_checkpoints = 10
    config.train.tensorboard = False
    return config
