"""CT, CPU-sized: the built-in quick virtual-patient set, a smaller UNet and a few hundred steps.

Deltas from ct_paper.py: base 16, depth 3, 64 x 64 patches, batch 16, 300 steps, and Adam at 1e-3
instead of the paper's 1e-4, which is far too slow for a few hundred steps (docs/EXPERIMENTS.md).

Run: make demo (prepares the data, trains noise2clean / noise2noise / consensus, evaluates the
best-validation checkpoints; 4 min 0 s on 2 idle CPU cores, 2026-11-25, before validation).
Reaches (16 test slices, seed 0; RMSE HU / SSIM x 100 vs the full-dose FBP; 2026-11-30): FBP
25.7 / 86.2, Noise2noise 19.7 / 84.6 (step 250), Proposed 16.2 / 90.2, Noise2clean 15.7 / 90.0. Every column, the
noiseless-FBP reference and the 3-seed ablation (make ablation): docs/EXPERIMENTS.md.
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
