"""Tests: a depth-2, 8-feature UNet on 32 px patches for a handful of steps.

Uses the in-memory synthetic set unless ``data.name`` is overridden (the end-to-end test points it
at a tiny TFDS dataset it builds).
"""

from configs import ct_quick


def get_config():
    config = ct_quick.get_config()
    config.data.name = "synthetic"
    config.data.config = "tiny"
    config.model.base_features = 8
    config.model.depth = 2
    config.loss.beta_w = 1e-4
    config.optim.learning_rate = 3e-3
    config.train.num_steps = 12
    config.train.batch_size = 8
    config.train.patch_size_px = 32
    config.train.patches_per_slice = 4
    config.train.log_every_steps = 2
    config.train.checkpoint_every_steps = 3
    config.train.eval_every_steps = 3
    config.train.keep_checkpoints = 2
    return config
