"""CT quick set trained as long as overfitting needs to show (5,000 steps at 1e-3), with
label-free validation every 125 steps and a checkpoint every 625 for the test trajectory.

Run: python ablation.py --config=configs/ct_quick_long.py --grid=consensus --seeds=0,1,2 \
  --root=work_dirs/ct_long --out=results/ct_long_consensus; then
  python evaluate.py --trajectory --runs=work_dirs/ct_long/consensus/seed0 --out=...
Results: docs/RESULTS.md ("How long to train"); what prevents the overfitting:
docs/EXPERIMENTS.md.
"""

from configs import ct_quick


def get_config():
    config = ct_quick.get_config()
    config.train.num_steps = 5000
    config.train.eval_every_steps = 125
    config.train.log_every_steps = 125
    config.train.checkpoint_every_steps = 625
    config.train.keep_checkpoints = 10
    config.train.tensorboard = False
    return config
