"""Exports a trained run as a self-contained denoiser folder (``consensus_jax.artifact``).

  python -m consensus_jax.export --workdir=work_dirs/ct_quick/distill --out=exported/ct_distilled

The folder holds the denoising function as serialized StableHLO (``jax.export``, lowered for CPU
and CUDA, with symbolic batch size, height and width; the padding to a multiple of 2**depth
happens inside; for a scheme with several networks it returns their spread beside the denoised
image, ``consensus_jax.uncertainty``), its parameters as ``params.npz``, ``manifest.json``
(modality, inputs and outputs, units, the geometry and dose or acceleration trained for, the
training config's hash, versions, platforms, checkpoint) and ``load_model.py``, the loader,
which needs jax and numpy only.
Orbax checkpoints stay the training format; this is what is handed on.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax import export

import consensus_jax
from consensus_jax import artifact, errors, input_pipeline, outputs, runs
from consensus_jax.errors import ConfigError, MissingRunError

#: The command named in the record of each folder it writes (``consensus_jax.outputs``).
COMMAND = "consensus_jax.export"
#: Platforms the function is lowered for (one artifact runs on either).
PLATFORMS = ("cpu", "cuda")
#: Physical units of the images a model sees, and the factor the network's inputs are divided by.
UNITS = {"ct": ("HU", 1000.0), "mri": ("(real, imaginary) channels, per-slice normalised", 1.0)}
#: Dataset metadata copied into the manifest: what the model was trained for.
_METADATA_KEYS = ("source", "units", "geometry", "photons_per_ray_full_dose", "dose_fraction",
                  "image_shape", "num_coils", "snr", "acceleration", "num_center_lines",
                  "mask_convention", "sense_lambda", "sense_iterations", "map_threshold",
                  "coil_maps", "normalisation", "num_splits")


def build(workdir: str | Path, checkpoint: str | int = "best"
          ) -> tuple[export.Exported, list[np.ndarray], dict[str, Any]]:
    """(exported function, its parameters, manifest) of a run's checkpoint."""
    method, params, step, config = runs.load_run(workdir, checkpoint)
    leaves, treedef = jax.tree.flatten(params)
    channels = int(method.model.in_channels)

    # A scheme with a spread of networks exports (z, spread) from one pass of its networks;
    # the manifest's "outputs" says which the function returns.
    with_spread = method.spread is not None

    def denoise(leaves, *images):
        params = jax.tree.unflatten(treedef, leaves)
        if with_spread:
            return method.denoise_and_spread(params, *images)
        return method.denoise(params, *images)

    b, h, w = export.symbolic_shape("b, h, w")
    image = jax.ShapeDtypeStruct((b, h, w, channels), jnp.float32)
    specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
    platforms = PLATFORMS if _cuda_lowering_available() else ("cpu",)
    exported = export.export(jax.jit(denoise), platforms=platforms)(
        specs, *[image] * len(method.export_inputs))
    units, scale = UNITS[config.modality]
    stored = (Path(workdir) / "config.json").read_bytes()
    metadata = input_pipeline.dataset_metadata(config.data)
    manifest = {
        "format_version": artifact.FORMAT_VERSION,
        "modality": config.modality,
        "kind": method.kind,
        "inputs": list(method.export_inputs),
        "outputs": list(artifact.OUTPUTS if with_spread else artifact.OUTPUTS[:1]),
        "input_description": method.describe_inputs(config.modality),
        "units": units,
        "scale": scale,
        "channels": channels,
        "size_multiple": int(method.model.size_multiple),
        "trained_for": {k: metadata[k] for k in _METADATA_KEYS if k in metadata},
        "dataset": f"{config.data.name}/{config.data.config}",
        "checkpoint": {"step": int(step), "which": str(checkpoint),
                       "workdir": str(Path(workdir).resolve())},
        "config_sha256": hashlib.sha256(stored).hexdigest(),
        "model": {"base_features": int(method.model.base_features),
                  "depth": int(method.model.depth), "dtype": str(method.model.dtype)},
        "platforms": list(exported.platforms),
        "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                     "numpy": np.__version__, "consensus_jax": consensus_jax.__version__},
        "exported": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    return exported, [np.asarray(x) for x in leaves], manifest


def _cuda_lowering_available() -> bool:
    try:  # lowering for CUDA needs no GPU, but some jax builds lack the CUDA lowering rules
        export.export(jax.jit(jnp.sin), platforms=("cuda",))(
            jax.ShapeDtypeStruct((2,), jnp.float32))
        return True
    except Exception:  # noqa: BLE001 - any failure means: CPU only
        return False


def write(exported: export.Exported, params: list[np.ndarray], manifest: dict[str, Any],
          out: str | Path, overwrite: bool = False) -> Path:
    """Writes the folder ``out`` all at once (a temporary folder renamed at the end); the
    manifest lists each file's SHA-256. An existing ``out`` is replaced only when ``overwrite``
    and it is an unchanged earlier export (``consensus_jax.outputs``)."""
    workdir = Path(manifest["checkpoint"]["workdir"])
    out = outputs.check_destination(out, COMMAND, overwrite, {"training workdir": workdir},
                                    flag="--out")
    with outputs.write_output(out, COMMAND, folder=True) as tmp:
        (tmp / artifact.FUNCTION).write_bytes(exported.serialize())
        np.savez(tmp / artifact.PARAMS, **{f"p{i:04d}": p for i, p in enumerate(params)})
        shutil.copyfile(artifact.__file__, tmp / "load_model.py")
        files = {name: outputs.sha256(tmp / name)
                 for name in (artifact.FUNCTION, artifact.PARAMS, "load_model.py")}
        (tmp / artifact.MANIFEST).write_text(json.dumps({**manifest, "files": files}, indent=1))
    return out


def load(path: str | Path, checkpoint: str | int = "best") -> artifact.Model:
    """An exported folder, or a training workdir exported in memory, as an ``artifact.Model``."""
    path = Path(path)
    if (path / artifact.MANIFEST).is_file():
        return artifact.Model.load(path)
    if (path / "config.json").is_file():
        exported, params, manifest = build(path, checkpoint)
        return artifact.Model(export.deserialize(exported.serialize()), params, manifest)
    raise MissingRunError(f"{path} is neither an exported model (no {artifact.MANIFEST}) nor a "
                          "training workdir (no config.json).")


@errors.boundary
def main(argv: list[str] | None = None) -> int:
    from absl import flags  # noqa: PLC0415 - keeps `import consensus_jax.export` light

    fv = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "Training workdir to export.", flag_values=fv)
    flags.DEFINE_string("out", None, "Folder to write (must not exist).", flag_values=fv)
    flags.DEFINE_string("checkpoint", "best", "best (lowest validation loss), latest, or a step.",
                        flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace an unchanged earlier export at --out (never "
                      "another folder).", flag_values=fv)
    errors.define_verbose_flag(fv)
    errors.parse_flags(fv, argv or sys.argv)
    if not fv.workdir or not fv.out:
        raise ConfigError("usage: python -m consensus_jax.export --workdir=RUN --out=FOLDER "
                          "[--checkpoint=best|latest|STEP] [--overwrite]")
    # Before the slow part: where the export would go, and whether it may go there.
    out = outputs.check_destination(fv.out, COMMAND, fv.overwrite,
                                    {"training workdir": Path(fv.workdir)}, flag="--out")
    checkpoint = int(fv.checkpoint) if fv.checkpoint.isdigit() else fv.checkpoint
    exported, params, manifest = build(fv.workdir, checkpoint)
    write(exported, params, manifest, out, overwrite=fv.overwrite)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"Exported {manifest['kind']} ({manifest['modality']}, step "
          f"{manifest['checkpoint']['step']}, platforms {', '.join(manifest['platforms'])}) to "
          f"{out}: {size / 1e6:.1f} MB.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
