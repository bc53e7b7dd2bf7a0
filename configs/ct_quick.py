"""CT, CPU-sized: the built-in quick virtual-patient set, a smaller UNet and a few hundred steps.

Deltas from ct_paper.py: base 16, depth 3, 64 x 64 patches, batch 16, and Adam at 1e-3 instead of
the paper's 1e-4 (NOTES.md: 1e-4 is far too slow for a few hundred steps).

Run: make demo (prepares the data, trains noise2clean / noise2noise / consensus, evaluates;
4 min 0 s on 2 idle CPU cores on 2026-11-25: data + TV baselines 115 s, training 32 / 33 / 51 s,
evaluation 9 s; results/ct_quick/timings.json).

What it reaches (16 test slices of 2 virtual patients, training seed 0, mean +- std over slices;
RMSE in HU / SSIM in the liver window, x 100), against the full-dose FBP (the paper's protocol):
  FBP 25.7 / 86.2, TV 27.9 / 83.6, Noise2noise 20.0 / 85.1, Noise2noise (both halves) 18.2 / 86.3,
  Proposed 16.2 / 90.2, Noise2clean 15.7 / 90.0;
against the noiseless FBP: FBP 29.5 / 80.1, TV 24.8 / 91.3, Noise2noise 15.6 / 91.1,
  Noise2noise (both halves) 13.2 / 93.1, Proposed 15.8 / 89.2, Noise2clean 13.8 / 91.2.
Expected ordering (issue 5) against the full-dose FBP: SSIM proposed > FBP, RMSE proposed < FBP,
proposed SSIM within 2 points of Noise2clean hold; Noise2noise's SSIM is BELOW FBP's (as in
NOTES.md), not above it. Seed spread and the loss-term ablation: make ablation (README).
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
    return config
