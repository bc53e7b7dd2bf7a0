"""Tables in the paper's layout, outputs never overwritten, baselines aligned by slice."""

import json

import ml_collections
import numpy as np
import pytest

from consensus_jax import evaluation


def _results():
    rng = np.random.default_rng(0)
    out = []
    for ref in ("full-dose FBP", "noiseless FBP"):
        for m in ("Proposed", "FBP", "Noise2noise", "Noise2clean", "TV"):
            out.append(evaluation.Result(m, ref, {"rmse_hu": rng.uniform(10, 30, 5),
                                                  "ssim": rng.uniform(80, 90, 5)}))
    return out


def test_markdown_table_has_paper_column_order_and_mean_std():
    results = _results()
    table = evaluation.markdown_table("ct", results).splitlines()
    assert table[0] == "| Index | FBP | TV | Noise2noise | Proposed | Noise2clean |"
    assert table[2].startswith("| RMSE (HU) vs full-dose FBP |")
    proposed = [r for r in results if r.method == "Proposed" and r.reference == "full-dose FBP"][0]
    v = proposed.values["rmse_hu"]
    assert f"{v.mean():.1f} ± {v.std():.1f}" == table[2].split("|")[5].strip()
    assert len(table) == 2 + 4


def test_outputs_are_never_overwritten(tmp_path):
    results = _results()
    evaluation.write_outputs(tmp_path, "ct", results, "first")
    evaluation.write_outputs(tmp_path, "ct", results[:4], "second")
    assert (tmp_path / "table.md").read_text().startswith("second")
    assert (tmp_path / "table.1.md").read_text().startswith("first")
    assert (tmp_path / "results.1.json").exists() and (tmp_path / "table.1.csv").exists()
    payload = json.loads((tmp_path / "results.json").read_text())
    assert len(payload["per_slice"][0]["rmse_hu"]) == 5


def test_extra_baselines_are_aligned_by_patient_and_slice(tmp_path, monkeypatch):
    from consensus_jax import input_pipeline

    monkeypatch.setattr(input_pipeline, "dataset_dir", lambda cfg: tmp_path)
    tv = np.arange(4, dtype=np.float32)[:, None, None, None] * np.ones((4, 2, 2, 1), np.float32)
    np.savez(tmp_path / "baselines_test.npz", TV=tv, patient_id=np.array([1, 1, 0, 0]),
             slice_index=np.array([5, 3, 9, 2]))
    cfg = ml_collections.ConfigDict({"name": "ct_consensus", "config": "x"})
    images = {"patient_id": np.array([0, 1, 1]), "slice_index": np.array([2, 3, 5])}
    got = evaluation.load_extra_baselines(cfg, "test", images)
    np.testing.assert_array_equal(got["TV"][:, 0, 0, 0], [3, 1, 0])
    images["slice_index"] = np.array([2, 3, 4])
    with pytest.raises(ValueError, match=r"lacks slice .* \(1, 4\)"):
        evaluation.load_extra_baselines(cfg, "test", images)
