"""Grids of loss settings for ablation.py (paper Section 2.3: tune beta_w with beta_r = 0, then
beta_r with beta_w fixed). Each entry: name -> config overrides; seeds come from the command line.

Run: make ablation (loss_terms on configs/ct_quick.py, seeds 0, 1, 2); make ablation-mri
(methods on configs/mri_quick.py, seeds 0, 1, 2); make ablation-k (k_way on configs/ct_quick.py,
seeds 0, 1, 2, after python -m data_prep.ct --config=quick_k3 and --config=quick_k4); make
transfer-mri (mri_transfer on configs/mri_quick.py with the quick and the mni set, each scored on
both, seeds 0, 1, 2). The other grids' commands, their results and run times: docs/RESULTS.md
and docs/EXPERIMENTS.md.
"""

from consensus_jax.errors import ConfigError


def get_grid(kind: str = "loss_terms") -> dict[str, dict]:
    n2n = {"loss.kind": "noise2noise", "loss.beta_r": 0.0}
    # The three trained methods of Tables 1-2 as the config defines them, for seed statistics.
    methods = {"noise2clean": {"loss.kind": "noise2clean", "loss.beta_r": 0.0},
               "noise2noise": n2n, "consensus": {}}
    # MRI quick: whole 128 px images at batch 4, the pixels per step of 16 patches of 64 px.
    whole_images = {"train.patch_size_px": 128, "train.batch_size": 4}
    grids = {
        # The four corners of Eq. 12 and the baselines trained the same way.
        "loss_terms": {
            "noise2clean": {"loss.kind": "noise2clean", "loss.beta_r": 0.0},
            "noise2noise": n2n,
            "consensus Ln": {"loss.beta_w": 0.0, "loss.beta_r": 0.0},
            "consensus Ln+Lw": {"loss.beta_r": 0.0},
            "consensus Ln+Lr": {"loss.beta_w": 0.0},
            "consensus Ln+Lw+Lr": {},
        },
        "methods": methods,
        # The two baselines trained like the proposed method (long runs: one seed each).
        "baselines": {
            "noise2clean": {"loss.kind": "noise2clean", "loss.beta_r": 0.0},
            "noise2noise": n2n,
        },
        # The proposed method alone, for seed statistics of long runs.
        "consensus": {"consensus": {}},
        # What might prevent paper-length overfitting (configs/ct_quick_long.py; the 2x and 4x
        # sets are built with --config.extra_train_patients=8 / 24, see docs/EXPERIMENTS.md).
        "overfitting": {
            "consensus augment": {"train.augment": True},
            "consensus beta_w=1e-4": {"loss.beta_w": 1e-4},
            "consensus 4x patients": {"data.config": "quick_train4x"},
            "consensus 2x patients": {"data.config": "quick_train2x"},
            "consensus beta_w=1e-5": {"loss.beta_w": 1e-5},
        },
        # The same question for MRI (configs/mri_quick_long.py, 4,000 steps; the 2x set is built
        # with --config.extra_train_patients=8, see docs/EXPERIMENTS.md). Whole 128 px images
        # at batch 4 (the same pixels per step as 16 patches of 64 px) show each network the
        # aliasing along the whole phase-encode direction.
        "mri_overfitting": {
            "consensus augment": {"train.augment": True},
            "consensus full-width patches": whole_images,
            "consensus 2x patients": {"data.config": "quick_train2x"},
            "consensus beta_w=1e-4": {"loss.beta_w": 1e-4},
            "consensus beta_w=1e-5": {"loss.beta_w": 1e-5},
        },
        # Does the MRI result carry to other anatomy? The three methods and two changes of the
        # pair's training, scored on their own test split and, with ablation.py --test_data, on
        # another preset's (the knees' runs on mni and the reverse; docs/EXPERIMENTS.md). The
        # first three share their workdirs with the methods grid under the same --root.
        "mri_transfer": {**methods, "consensus augment": {"train.augment": True},
                         "consensus full-width patches": whole_images},
        # One network distilled from a trained pair (the teacher: make demo's consensus run on
        # CT, make ablation-mri's seed-0 consensus run on MRI).
        "distill_ct": {"distilled": {"loss.kind": "distill", "loss.beta_r": 0.0,
                                     "loss.teacher": "work_dirs/ct_quick/consensus"}},
        "distill_mri": {"distilled": {"loss.kind": "distill", "loss.beta_r": 0.0,
                                      "loss.teacher": "work_dirs/mri_methods/consensus/seed0"}},
        # bfloat16 compute (float32 parameters, optimizer state and loss) against float32.
        "precision": {"consensus float32": {}, "consensus bfloat16": {"model.dtype": "bfloat16"}},
        "beta_r": {f"consensus beta_r={b}": {"loss.beta_r": b} for b in (0.0, 0.1, 0.5, 2.0)},
        "beta_w": {f"consensus beta_w={b}": {"loss.beta_w": b, "loss.beta_r": 0.0}
                   for b in (0.0, 5e-6, 5e-5, 5e-4)},
        # K networks on K view subsets of the same scans (the quick set's patients, slices and
        # noise: presets quick_k3, quick_k4) against the pair and the baselines, and
        # Noise2Inverse (one network) on the same splits; docs/k_way_consensus.md.
        "k_way": {
            "noise2clean": {"loss.kind": "noise2clean", "loss.beta_r": 0.0},
            "noise2noise": n2n,
            "consensus K=2": {},
            "consensus K=3": {"data.config": "quick_k3", "data.num_splits": 3},
            "consensus K=4": {"data.config": "quick_k4", "data.num_splits": 4},
            "noise2inverse K=2": {"loss.kind": "noise2inverse", "loss.beta_r": 0.0},
            "noise2inverse K=4": {"loss.kind": "noise2inverse", "loss.beta_r": 0.0,
                                  "data.config": "quick_k4", "data.num_splits": 4},
        },
    }
    if kind not in grids:
        raise ConfigError(f"Unknown ablation grid {kind!r}; choose from {sorted(grids)}.")
    return grids[kind]
