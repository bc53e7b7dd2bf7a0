"""Label-free validation: on held-out slices the Eq. 8 loss tracks the clean consensus error
(Eq. 7) up to the noise constant, picks its minimum, and the guards act on it.

The run is made to overfit on purpose: two training slices of the synthetic set, Ln alone
(beta_w = beta_r = 0), a high learning rate. The synthetic halves are x + n1 and x + n2 with
independent Gaussian noise of std 0.5 on 32 x 32 images, so the constant is
(E||n1||^2 + E||n2||^2) / 2 = 0.25 * 1024 per image.
"""

import json

import numpy as np
import pytest

from configs import tiny
from consensus_jax import evaluation, experiment

NOISE_CONSTANT = 0.25 * 32 * 32
EVERY = 10


def _overfit_config(**train):
    config = tiny.get_config()
    config.train.tensorboard = False
    config.train.progress = False
    config.loss.beta_w = 0.0
    config.loss.beta_r = 0.0
    config.data.max_train_slices = 2
    config.optim.learning_rate = 3e-3
    config.train.num_steps = 240
    config.train.eval_every_steps = EVERY
    config.train.log_every_steps = EVERY
    config.train.checkpoint_every_steps = 1000
    for k, v in train.items():
        config.train[k] = v
    return config


def _rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _ranks(v):
    return np.argsort(np.argsort(v)).astype(float)


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("overfit")
    experiment.fit(_overfit_config(), workdir)
    return workdir


def _check_selection(rows: list[dict], constant: float) -> int:
    """The held-out loss minus ``constant`` follows the clean error of an overfitting run and
    selects its minimum; returns the selected step."""
    val = [r for r in rows if "val/loss" in r]
    steps = np.array([r["step"] for r in val])
    heldout = np.array([r["val/loss"] for r in val]) - constant
    clean = np.array([r["oracle/clean_error"] for r in val])
    spearman = np.corrcoef(_ranks(heldout), _ranks(clean))[0, 1]
    assert spearman >= 0.9, (spearman, heldout, clean)
    # Unbiased up to the noise constant: the difference is small next to the clean error's range.
    assert np.median(np.abs(heldout - clean)) < 0.1 * (clean.max() - clean.min())
    best = int(val[-1]["val/best_step"])
    assert abs(best - steps[np.argmin(clean)]) <= EVERY
    # The run did overfit: the clean error at the end is well above its minimum.
    assert clean[-1] > 1.5 * clean.min()
    return best


def test_heldout_loss_tracks_clean_error_and_selects_its_minimum(overfit_run):
    rows = _rows(overfit_run)
    best = _check_selection(rows, NOISE_CONSTANT)
    # The clean error rose while the training Ln kept falling (unbounded below on memorised
    # noise).
    train = np.array([r["consensus"] for r in rows if "consensus" in r])
    third = len(train) // 3
    assert train[-third:].mean() < train[:third].mean() - 100
    # Evaluation uses the selected checkpoint by default.
    assert evaluation.resolve_checkpoint(overfit_run)[1:] == (best, "best validation loss")
    assert evaluation.resolve_checkpoint(overfit_run, "latest")[1] == 240


def test_overfitting_warning_is_logged(overfit_run):
    assert any(r.get("overfitting_warning") == 1.0 for r in _rows(overfit_run))


def test_early_stopping_ends_the_run_and_it_stays_finished(tmp_path, capsys):
    experiment.fit(_overfit_config(early_stop_patience=3), tmp_path)
    stop = json.loads((tmp_path / experiment.EARLY_STOP_FILE).read_text())
    assert stop["step"] < 240 and stop["step"] - stop["best_step"] == 3 * EVERY
    _, _, step, _ = evaluation.load_run(tmp_path, "latest")
    assert step == stop["step"]
    experiment.fit(_overfit_config(early_stop_patience=3), tmp_path)
    assert "stopped early" in capsys.readouterr().out


def test_trajectory_scores_kept_and_best_checkpoints(overfit_run, tmp_path):
    path = evaluation.trajectory([overfit_run], tmp_path)
    rows = json.loads((tmp_path / "trajectory.json").read_text())
    best = evaluation.resolve_checkpoint(overfit_run)[1]
    assert [(r["checkpoint"], r["step"]) for r in rows] == [("240", 240), ("best", best)]
    # The selected checkpoint has the lower test error: the run overfits after it.
    assert rows[1]["rmse_hu"] < rows[0]["rmse_hu"]
    assert "best (validation)" in path.read_text()


def test_checkpoint_choice_errors_name_the_fix(overfit_run):
    with pytest.raises(ValueError, match=r"no checkpoint of step 7; it has \[240\]"):
        evaluation.resolve_checkpoint(overfit_run, 7)
    with pytest.raises(ValueError, match="'best', 'latest' or a step number"):
        evaluation.resolve_checkpoint(overfit_run, "newest")
    assert evaluation.resolve_checkpoint(overfit_run, "240")[1:] == (240, "requested")


def k_way_noise_constant(num_splits: int, sigma: float = 0.5, pixels: int = 32 * 32) -> float:
    """E of the K-way loss minus the clean consensus error, per image: replacing ||y_k - x||^2
    by ||y_k - mean_{j != k} x_j||^2 adds E||mean_{j != k} n_j||^2 = sum_{j != k} s_j^2 /
    (K - 1)^2, averaged over k: sum_j s_j^2 / (K (K - 1)) (docs/k_way_consensus.md). The
    synthetic set gives each of K splits noise std sigma * sqrt(K / 2) per pixel."""
    per_split = sigma ** 2 * num_splits / 2.0 * pixels
    return num_splits * per_split / (num_splits * (num_splits - 1))


def test_k_way_noise_constant_of_the_pair_is_eq_8s():
    assert k_way_noise_constant(2) == NOISE_CONSTANT


@pytest.mark.slow
def test_heldout_k3_loss_tracks_clean_error_and_selects_its_minimum(tmp_path):
    """The same overfitting run with three networks on K = 3 splits: the held-out K-way
    consensus loss minus its constant (192 per 32 x 32 image) follows the clean error of
    z = mean_k f_k(x_k), and its minimum picks the clean error's."""
    config = _overfit_config()
    config.data.num_splits = 3
    experiment.fit(config, tmp_path)
    rows = _rows(tmp_path)
    _check_selection(rows, k_way_noise_constant(3))
    # The K = 3 run trained three networks on x1, x2, x3 (its fit terms are logged).
    assert all(f"fit{k}" in rows[-1] or any(f"fit{k}" in r for r in rows) for k in (1, 2, 3))
