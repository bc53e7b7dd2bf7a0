"""Export round trip: the artifact, loaded with jax and numpy only, denoises as train_lib does."""

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from consensus_jax import artifact, evaluation, experiment, train_lib
from consensus_jax import export as cj_export

# Loads the artifact in a fresh interpreter where the training stack cannot be imported.
_LOADER = """
import sys
for name in ("flax", "optax", "orbax", "orbax.checkpoint", "tensorflow", "consensus_jax",
             "ml_collections"):
    sys.modules[name] = None
sys.path.insert(0, sys.argv[1])
import numpy as np
from load_model import Model
model = Model.load(sys.argv[1])
inputs = np.load(sys.argv[2])
out = {k: model.denoise(*[inputs[f"{k}_{n}"] for n in model.inputs]) for k in ("a", "b")}
np.savez(sys.argv[3], **out)
print(repr(model))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for kind in ("consensus", "noise2noise"):
        config = tiny.get_config()
        config.train.tensorboard = config.train.progress = False
        config.train.num_steps = 3
        config.loss.kind = kind
        config.loss.beta_r = 0.5 if kind == "consensus" else 0.0
        experiment.fit(config, root / kind)
        out[kind] = root / kind
    return out


@pytest.mark.parametrize("kind", ["consensus", "noise2noise"])
def test_exported_model_matches_train_lib_in_a_fresh_process_without_training_code(
        runs, kind, tmp_path):
    folder = cj_export.write(*cj_export.build(runs[kind]), tmp_path / "model")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == kind and manifest["units"] == "HU" and manifest["scale"] == 1000
    assert manifest["inputs"] == (["x1", "x2"] if kind == "consensus" else ["x_est"])
    assert "cpu" in manifest["platforms"] and len(manifest["config_sha256"]) == 64
    rng = np.random.default_rng(0)
    # Two sizes, one not a multiple of 2**depth (padded inside the exported function), in HU.
    inputs = {f"{size}_{name}": rng.normal(0, 300, shape).astype(np.float32)
              for size, shape in (("a", (3, 32, 32)), ("b", (2, 45, 38)))
              for name in manifest["inputs"]}
    np.savez(tmp_path / "in.npz", **inputs)
    result = subprocess.run([sys.executable, "-c", _LOADER, str(folder), str(tmp_path / "in.npz"),
                             str(tmp_path / "out.npz")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Model({kind}, ct" in result.stdout
    method, params, _, _ = evaluation.load_run(runs[kind])
    out = np.load(tmp_path / "out.npz")
    for size in ("a", "b"):
        xs = [jnp.asarray(inputs[f"{size}_{n}"][..., None] / 1000) for n in manifest["inputs"]]
        expected = np.asarray(train_lib.denoise(method, params, *xs))[..., 0] * 1000
        np.testing.assert_allclose(out[size], expected, atol=1e-3, rtol=1e-5)  # HU


def test_export_refuses_to_overwrite_and_names_the_problem(runs, tmp_path):
    parts = cj_export.build(runs["noise2noise"], "latest")
    folder = cj_export.write(*parts, tmp_path / "model")
    before = (folder / "params.npz").read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        cj_export.write(*parts, folder)
    assert (folder / "params.npz").read_bytes() == before
    assert cj_export.main(["export", f"--workdir={runs['noise2noise']}", f"--out={folder}"]) == 1
    assert not list(tmp_path.glob(".model-*"))  # no temporary folder left behind
    with pytest.raises(FileNotFoundError, match="neither an exported model"):
        cj_export.load(tmp_path)


def test_model_refuses_wrong_inputs(runs, tmp_path):
    pair = cj_export.load(runs["consensus"])
    single = cj_export.load(runs["noise2noise"])
    x = np.zeros((1, 32, 32), np.float32)
    with pytest.raises(ValueError, match="pair of half reconstructions"):
        pair.denoise(x)
    with pytest.raises(ValueError, match="takes one image per slice"):
        single.denoise(x, x)
    with pytest.raises(ValueError, match=r"expected \[S, H, W, 1\]"):
        single.denoise(np.zeros((32, 32), np.float32))
    bad = x.copy()
    bad[0, 3, 4] = np.nan
    with pytest.raises(ValueError, match="slice 0 holds NaN"):
        single.denoise(bad)
    assert isinstance(single, artifact.Model)
