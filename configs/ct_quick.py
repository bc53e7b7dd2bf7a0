"""CT, CPU-sized: the built-in quick virtual-patient set, a smaller UNet and a few hundred steps.

Deltas from ct_paper.py: base 16, depth 3, 64 x 64 patches, batch 16, 300 steps, and Adam at 1e-3
instead of the paper's 1e-4, which is far too slow for a few hundred steps (docs/EXPERIMENTS.md).

Run: make demo (prepares the data, trains noise2clean / noise2noise / consensus at seed 0,
evaluates the best-validation checkpoints); make ablation trains the loss settings over seeds
0, 1, 2. Their tables, time and machine: docs/RESULTS.md.
"""

from configs import ct_paper


def get_config():
    config = ct_paper.get_config()
    config.data.config = "quick"
    config.model.base_features = 16
    config.model.depth = 3
    config.optim.learning_rate = 1e-3
    config.train.num_epochs = 0
    config.train.num_steps = 300
    config.train.batch_size = 16
    config.train.patch_size_px = 64
    config.train.log_every_steps = 20
    config.train.checkpoint_every_steps = 100
    config.train.eval_every_steps = 50
    return config
