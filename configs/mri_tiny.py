"""Tests: MRI with a depth-2, 8-feature UNet on 32 px patches of the tiny knee set, a few steps.

Reads the TFDS set of ``python -m data_prep.mri --config=tiny`` (64 px, 4 coils); the tests point
``data.data_dir`` at the copy they build. ``--config.data.name=synthetic`` gives an in-memory set.
"""

from configs import mri_paper


def get_config():
    config = mri_paper.get_config()
    config.data.config = "tiny"
    config.model.base_features = 8
    config.model.depth = 2
    config.loss.beta_w = 1e-4
    config.optim.learning_rate = 3e-3
    config.train.num_epochs = 0
    config.train.num_steps = 12
    config.train.batch_size = 8
    config.train.patch_size_px = 32
    config.train.patches_per_slice = 4
    config.train.log_every_steps = 2
    config.train.checkpoint_every_steps = 3
    config.train.eval_every_steps = 3
    config.train.keep_checkpoints = 2
    return config
