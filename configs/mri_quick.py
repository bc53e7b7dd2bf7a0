"""MRI, CPU-sized: the built-in quick knee set (128 px), a base-16 UNet and 1,000 steps.

Deltas from mri_paper.py: data config "quick" (128 px, 8 coils, 16 centre lines, 4x, 8 + 2
patients x 8 slices), base 16 features (depth 4 as in the paper), 64 x 64 patches, batch 16,
1,000 steps (about 6 epochs) and Adam at 1e-3 instead of the paper's 1e-4 (NOTES.md: 1e-4 is far too
slow for a few hundred steps), decayed to 0 by a half-cosine over the run (optim.schedule; the
paper's rate is constant). beta_w = 1e-6 and beta_r = 5 as in the paper.

Run (make demo-mri does all of it: 6 min 5 s on 2 idle CPU cores with the data built, 2026-11-25:
training 91 / 92 / 170 s, evaluation 8 s):
  python -m data_prep.mri --config=quick
  python train.py --config=configs/mri_quick.py --workdir=work_dirs/mri_quick/noise2clean \
      --config.loss.kind=noise2clean --config.loss.beta_r=0
  python train.py --config=configs/mri_quick.py --workdir=work_dirs/mri_quick/noise2noise \
      --config.loss.kind=noise2noise --config.loss.beta_r=0
  python train.py --config=configs/mri_quick.py --workdir=work_dirs/mri_quick/consensus
  python evaluate.py --runs=work_dirs/mri_quick/consensus,work_dirs/mri_quick/noise2noise,\
work_dirs/mri_quick/noise2clean --out=results/mri_quick
Over training seeds 0, 1, 2: make ablation-mri (17 min; results/mri_methods/ablation.md).

What it reaches (16 test slices, complex RMSE x 1e-3 / amplitude SSIM vs the fully sampled
image; make ablation-mri, mean +- std over training seeds 0, 1, 2):
  Zero-filling 109.9 / 58.2, SENSE 67.1 / 77.0 (no training),
  Noise2noise 112.9 +- 3.7 / 52.1 +- 0.5, Noise2noise (both halves) 92.3 +- 2.4 / 58.9 +- 0.5,
  Proposed 69.8 +- 0.3 / 69.9 +- 0.4, Noise2clean 47.3 +- 1.5 / 84.6 +- 0.6.
Seed 0 (make demo-mri): Noise2noise 115.6 / 51.4, both halves 94.5 / 58.3, Proposed 69.5 / 70.5,
Noise2clean 46.2 / 84.3. Noise2clean wins clearly. The consensus pair beats zero-filling and
Noise2noise on every seed but not SENSE (unlike the paper's Table 2); Noise2noise on one half is
about as bad as zero-filling.

The schedule: at a constant 1e-3 (same seeds) the self-supervised runs got WORSE with longer
training (consensus 69.1 +- 0.9 at step 500, 76.2 +- 2.2 / 66.9 +- 1.0 at step 1,000; Noise2noise
124.2 +- 4.3 / 49.9 +- 2.3, both halves 99.9 +- 2.8 / 56.6 +- 2.4); with the cosine decay they end
where the constant rate peaked or better, while Noise2clean ends 2.7 higher in RMSE (seed 0:
43.5 constant, 46.2 cosine). There is no validation split to stop on; the step count was fixed
before any of these numbers were seen.

Patches (constant rate): at 600 steps (seed 0, same pixels per step), 64 x 64 patches x 16 beat
whole 128 x 128 slices x 4 for the consensus pair (RMSE 68.4 vs 83.9) and Noise2clean (46.2 vs
53.0); Noise2noise was about level (both halves 93.1 vs 90.6). Non-square full-width strips are not
supported by consensus_jax/patches.py, so whole slices were the full-width variant tested.
"""

from configs import mri_paper


def get_config():
    config = mri_paper.get_config()
    config.data.config = "quick"
    config.model.base_features = 16
    config.optim.learning_rate = 1e-3
    config.optim.schedule = "cosine"
    config.train.num_epochs = 0
    config.train.num_steps = 1000
    config.train.batch_size = 16
    config.train.patch_size_px = 64
    config.train.log_every_steps = 50
    config.train.checkpoint_every_steps = 250
    return config
