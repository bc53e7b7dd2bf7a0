"""Distillation (the paper's Discussion): one network g from one reconstructed image to the
frozen output z of a trained consensus run, so the proposed method runs where only
reconstructed images exist."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from consensus_jax.errors import ConfigError, MissingRunError
from consensus_jax.methods.base import register
from consensus_jax.methods.noise2clean import Noise2Clean

#: The batch key holding a distilled network's target, the teacher's output.
TEACHER_KEY = "x_teacher"


@register
@dataclasses.dataclass(frozen=True)
class Distill(Noise2Clean):
    """``g(x_in) -> z`` with ``x_in = loss.distill_input`` (default ``x_est``: CT quarter-dose
    FBP, MRI SENSE; ``x_zf`` for zero-filling) and ``z`` the teacher's output on whole slices
    (``loss.teacher``: a consensus run on the same dataset, its best checkpoint), computed once
    before training (``prepare``). Validation: the same squared error on held-out slices."""

    kind = "distill"
    columns = ("Proposed (distilled)",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.teacher:
            raise ConfigError("loss.kind='distill' needs loss.teacher: the workdir of a trained "
                              "consensus run, e.g. --config.loss.teacher=work_dirs/ct_quick/"
                              "consensus.")

    @property
    def image_input(self) -> str:
        return self.distill_input

    @property
    def target_key(self) -> str:
        return TEACHER_KEY

    def data_keys(self) -> tuple[str, ...]:
        # The teacher's own inputs too; its outputs are added by ``prepare``.
        return tuple(dict.fromkeys((self.image_input, "x1", "x2")))

    def prepare(self, config: Any, load_run: Callable[[str], tuple[Any, Any, int, Any]]
                ) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """Loads the teacher with ``load_run`` (checked: a consensus run on this run's dataset)
        and returns the function that adds its output ``TEACHER_KEY`` to a split's whole
        slices."""
        where = f"loss.teacher={self.teacher}"
        try:
            teacher, params, step, t_config = load_run(self.teacher)
        except FileNotFoundError as e:
            raise MissingRunError(f"{where}: {e}") from None
        if teacher.kind != "consensus":
            raise ConfigError(f"{where} is a {teacher.kind!r} run; distillation needs a trained "
                              "consensus run (loss.kind='consensus').")
        ours = (config.modality, config.data.name, config.data.config)
        theirs = (t_config.modality, t_config.data.name, t_config.data.config)
        if ours != theirs:
            raise ConfigError(f"{where} was trained on {'/'.join(theirs)}, this run trains on "
                              f"{'/'.join(ours)}: distil on the teacher's own dataset.")
        if jax.process_index() == 0:
            print(f"Teacher: {self.teacher}, step {step} (its best checkpoint).")
        batch_size = int(config.eval.batch_size)

        def add_outputs(images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            (z,) = teacher.predict_slices(params, images, batch_size).values()
            return {**images, TEACHER_KEY: z}

        return add_outputs
