"""MRI, CPU-sized: the built-in quick knee set (128 px), a base-16 UNet and 1,000 steps.

Deltas from mri_paper.py: data config "quick" (128 px, 8 coils at SNR 18, 16 centre lines, 4x, 8 + 2
patients x 8 slices), base 16 features, 64 x 64 patches, batch 16, 1,000 steps, and Adam at 1e-3 (the
paper's 1e-4 is far too slow for a few hundred steps) decayed to 0 by a half-cosine (the paper's
rate is constant); docs/EXPERIMENTS.md has the measurements behind both choices.

Run (make demo-mri does all of it, seed 0; make ablation-mri repeats the training over seeds
0, 1, 2):
  python -m data_prep.mri --config=quick
  python train.py --config=configs/mri_quick.py --workdir=work_dirs/mri_quick/noise2clean \
      --config.loss.kind=noise2clean --config.loss.beta_r=0
  python train.py --config=configs/mri_quick.py --workdir=work_dirs/mri_quick/noise2noise \
      --config.loss.kind=noise2noise --config.loss.beta_r=0
  python train.py --config=configs/mri_quick.py --workdir=work_dirs/mri_quick/consensus
  python evaluate.py --runs=work_dirs/mri_quick/consensus,work_dirs/mri_quick/noise2noise,\
work_dirs/mri_quick/noise2clean --out=results/mri_quick
Results of make ablation-mri, its time and machine: docs/RESULTS.md.
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
    config.train.eval_every_steps = 100
    return config
