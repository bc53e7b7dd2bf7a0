"""CT, the paper's setting (Wu et al. 2019, Section 3.2, LDCT Grand Challenge).

UNet with 32 base features and 4 pooling levels; 96 x 96 patches, batch 40, 40 patches per training
slice per epoch; Adam 1e-4 for 100 epochs; beta_w = 5e-6, beta_r = 0.5; images in HU / 1000.
The dataset is the built-in 512 px virtual-patient set (8 training and 2 test patients, 50 slices
each), or a DICOM set with ``--config.data.config=dicom``.

Run (GPU-sized: 400 slices x 40 patches / 40 = 400 steps per epoch, 40,000 steps):
  python -m data_prep.ct --config=paper
  python train.py --config=configs/ct_paper.py --workdir=work_dirs/ct_paper/consensus
  python train.py --config=configs/ct_paper.py --workdir=work_dirs/ct_paper/noise2noise \
      --config.loss.kind=noise2noise --config.loss.beta_r=0
Expected: the ordering of the paper's Table 1 (SSIM consensus > Noise2noise > FBP; consensus SSIM
within ~1 point of Noise2clean). Paper-size step timings and the measured runs of the CPU-sized
variant (configs/ct_quick.py): docs/RESULTS.md.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.modality = "ct"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.name = "ct_consensus"  # a TFDS dataset prepared by data_prep
    config.data.config = "paper"  # builder config: tiny | quick | paper | dicom | numpy
    config.data.data_dir = "data/tfds"
    config.data.train_split = "train"
    config.data.test_split = "test"
    config.data.validation_split = "validation"  # whole held-out patients, for model selection
    config.data.max_train_slices = 0  # 0: all
    # K, the split reconstructions x1 .. xK each slice is trained on; must be the dataset's K
    # (the paper's odd/even halves: 2; K-way data: python -m data_prep.ct --config=quick_k3).
    config.data.num_splits = 2

    config.model = ml_collections.ConfigDict()
    config.model.base_features = 32
    config.model.depth = 4
    config.model.in_channels = 1
    config.model.out_channels = 1
    config.model.residual = True
    config.model.dtype = "float32"
    config.model.param_layout = "separate"  # or "stacked" (vmap; ~9x slower on XLA CPU)
    config.model.layer_impl = "auto"  # up-conv/pooling: "reshape" on CPU, XLA's layers on GPU

    config.loss = ml_collections.ConfigDict()
    config.loss.kind = "consensus"  # noise2clean | noise2noise | consensus | distill
    config.loss.beta_w = 5e-6
    config.loss.beta_r = 0.5
    config.loss.noise2clean_input = "x_est"  # quarter-dose FBP of all views -> full-dose FBP
    # distill: one network from this image to the output of a trained consensus run (its workdir)
    config.loss.distill_input = "x_est"  # the quarter-dose FBP of all views
    config.loss.teacher = ""

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 1e-4
    config.optim.schedule = "constant"  # the paper's; "cosine" decays to 0 over the run

    config.train = ml_collections.ConfigDict()
    config.train.num_epochs = 100
    config.train.num_steps = 0  # > 0 overrides num_epochs
    config.train.batch_size = 40
    config.train.patch_size_px = 96
    config.train.patches_per_slice = 40
    config.train.augment = False  # random flips / rot90 of patches (not in the paper)
    config.train.log_every_steps = 50
    config.train.steps_per_dispatch = 0  # training steps per dispatch; 0: the platform's default
    config.train.checkpoint_every_steps = 1000
    config.train.keep_checkpoints = 3
    # Label-free validation (the method's own loss on the validation patients) every so many
    # steps; the best checkpoint is kept in <workdir>/best. 0: off.
    config.train.eval_every_steps = 1000
    config.train.early_stop_patience = 0  # > 0: stop after that many evaluations without a gain
    config.train.overfit_warning_evals = 3  # warn when validation rose this often in a row
    config.train.tensorboard = True
    config.train.progress = True

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 4
    return config
