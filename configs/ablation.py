"""Grids of loss settings for ablation.py (paper Section 2.3: tune beta_w with beta_r = 0, then
beta_r with beta_w fixed). Each entry: name -> config overrides; seeds come from the command line.
"""


def get_grid(kind: str = "loss_terms") -> dict[str, dict]:
    n2n = {"loss.kind": "noise2noise", "loss.beta_r": 0.0}
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
        "beta_r": {f"consensus beta_r={b}": {"loss.beta_r": b} for b in (0.0, 0.1, 0.5, 2.0)},
        "beta_w": {f"consensus beta_w={b}": {"loss.beta_w": b, "loss.beta_r": 0.0}
                   for b in (0.0, 5e-6, 5e-5, 5e-4)},
    }
    if kind not in grids:
        raise ValueError(f"Unknown ablation grid {kind!r}; choose from {sorted(grids)}.")
    return grids[kind]
