"""Loads an exported denoiser (``python -m consensus_jax.export``) with jax and numpy only.

An exported folder holds ``model.jaxexport`` (the denoising function as serialized StableHLO,
with symbolic batch size, height and width), ``params.npz`` (its parameters, in the function's
argument order) and ``manifest.json`` (what the model expects). This file is copied into every
exported folder as ``load_model.py``, so a colleague needs neither this project nor flax, optax
or orbax:

    from load_model import Model          # or: from consensus_jax.artifact import Model
    model = Model.load("exported/ct_distilled")
    denoised_hu = model.denoise(low_dose_hu)  # [S, H, W] in the manifest's units (CT: HU)

A model of several networks (the consensus pair) also gives their spread, an uncertainty map in
the same units: ``model.uncertainty(x1, x2)``, or both from one pass,
``z, spread = model.denoise_with_uncertainty(x1, x2)`` (``model.has_uncertainty`` says whether
it can).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax import export

try:
    from consensus_jax.errors import ConfigError, InputError, MissingRunError, RunError
except ImportError:  # the copy beside an exported model stands alone
    ConfigError = InputError = RunError = ValueError
    MissingRunError = FileNotFoundError

MANIFEST = "manifest.json"
FUNCTION = "model.jaxexport"
PARAMS = "params.npz"
FORMAT_VERSION = 3
#: Versions this loader reads: 3 adds "outputs" (what the function returns: the denoised image,
#: and for a model of several networks their spread); 2 adds the SHA-256 of each file
#: ("files"); 1 had neither (its function returns the denoised image only).
READABLE_VERSIONS = (1, 2, 3)
#: What an exported function may return, in this order: the denoised image, then the per-pixel
#: spread of the model's networks (``consensus_jax.uncertainty``), same shape and units.
OUTPUTS = ("denoised", "spread")
_MANIFEST_KEYS = ("modality", "kind", "inputs", "units", "scale", "channels", "checkpoint")


class Model:
    """A denoiser: ``denoise(x)`` for one image per slice, ``denoise(x1, x2)`` for a pair
    (``inputs`` names them)."""

    def __init__(self, exported: export.Exported, params: list[np.ndarray],
                 manifest: dict[str, Any]):
        self.exported, self.params, self.manifest = exported, params, manifest

    @classmethod
    def load(cls, folder: str | Path) -> Model:
        """Reads an exported folder, checking every file against the manifest (its SHA-256 and
        the parameters' count and shapes) so that a damaged or incomplete model is named, not
        run."""
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise MissingRunError(f"{path} not found: {folder} is not an exported model (make "
                                  "one with python -m consensus_jax.export).")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise RunError(f"{path} cannot be read ({err}); the exported model is damaged: "
                           "export it again.") from None
        if not isinstance(manifest, dict) or \
                manifest.get("format_version") not in READABLE_VERSIONS:
            version = manifest.get("format_version") if isinstance(manifest, dict) else None
            raise RunError(f"{path}: format_version {version!r}, this loader reads "
                           f"{list(READABLE_VERSIONS)}; export the model again.")
        missing = [k for k in _MANIFEST_KEYS if k not in manifest]
        if missing:
            raise RunError(f"{path} lacks {', '.join(missing)}; the exported model is damaged: "
                           "export it again.")
        outputs = manifest.get("outputs", ["denoised"])
        if (manifest["format_version"] >= 3 and "outputs" not in manifest) or \
                not isinstance(outputs, list) or outputs != list(OUTPUTS[:len(outputs)]) or \
                not outputs:
            raise RunError(f"{path}: outputs {manifest.get('outputs')!r}, expected "
                           f"{list(OUTPUTS[:1])} or {list(OUTPUTS)}; the exported model is "
                           "damaged: export it again.")
        _check_files(folder, manifest)
        try:
            exported = export.deserialize(bytearray((folder / FUNCTION).read_bytes()))
        except Exception as err:  # noqa: BLE001 - damage shows as any error of the deserialiser
            raise RunError(f"{folder / FUNCTION} cannot be read as an exported function "
                           f"({type(err).__name__}); export the model again.") from None
        here = {"gpu": "cuda"}.get(jax.default_backend(), jax.default_backend())
        if here not in exported.platforms:
            raise RunError(f"{folder} was exported for {list(exported.platforms)}; JAX runs "
                           f"on {here!r} here. Export the model again on such a machine.")
        if len(exported.out_avals) != len(outputs):
            raise RunError(f"{folder / FUNCTION} returns {len(exported.out_avals)} arrays, the "
                           f"manifest lists {outputs}; export the model again.")
        params = _read_params(folder / PARAMS, exported, len(manifest["inputs"]))
        return cls(exported, params, manifest)

    @property
    def inputs(self) -> list[str]:
        """The images each slice needs: ["x1", "x2"] for the consensus pair, one image for a
        single network (its name says which: x_est, x1, ...)."""
        return list(self.manifest["inputs"])

    @property
    def outputs(self) -> list[str]:
        """What the exported function returns: ["denoised"], or ["denoised", "spread"] for a
        model of several networks (versions before 3 return the denoised image only)."""
        return list(self.manifest.get("outputs", OUTPUTS[:1]))

    @property
    def has_uncertainty(self) -> bool:
        """Whether the model gives the spread of its networks (``uncertainty``)."""
        return "spread" in self.outputs

    def denoise(self, *images: np.ndarray, batch_size: int = 8,
                progress: Any = None) -> np.ndarray:
        """Denoised slices, in the units of the input (the manifest's ``units``).

        Args:
          images: one array per entry of ``inputs`` (a consensus pair: x1, x2), each
            [S, H, W] (one channel) or [S, H, W, C]; any H, W (padded inside).
          batch_size: slices per call.
          progress: optional callable(n) told after each batch how many slices were done.
        """
        return self._run(images, batch_size, progress)[0]

    def uncertainty(self, *images: np.ndarray, batch_size: int = 8,
                    progress: Any = None) -> np.ndarray:
        """The spread of the model's networks per pixel (their standard deviation; for the
        pair ``|f1 - f2| / 2``), >= 0, same shape and units as ``denoise``'s output; the
        arguments are ``denoise``'s. A model of one network has none (ConfigError)."""
        return self.denoise_with_uncertainty(*images, batch_size=batch_size,
                                             progress=progress)[1]

    def denoise_with_uncertainty(self, *images: np.ndarray, batch_size: int = 8,
                                 progress: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(``denoise``, ``uncertainty``) from one pass of the networks."""
        if not self.has_uncertainty:
            raise ConfigError(
                f"This model ({self.manifest['kind']}) has no uncertainty map: only a model of "
                "several networks (loss.kind=consensus) gives the spread of its networks"
                + ("" if self.manifest.get("format_version", 1) >= 3 else
                   "; or it was exported before version 3: export it again") + ".")
        z, spread = self._run(images, batch_size, progress)
        return z, spread

    def _run(self, images: tuple[np.ndarray, ...], batch_size: int,
             progress: Any) -> list[np.ndarray]:
        """Every entry of ``outputs`` for ``images``, in the input's units and layout."""
        names = self.inputs
        if len(images) < len(names) and len(names) > 1:
            raise InputError(
                f"This model ({self.manifest['kind']}) denoises "
                + ("a pair of half reconstructions" if len(names) == 2 else
                   f"the {len(names)} split reconstructions")
                + f" ({', '.join(names)}) of each slice; pass all of them, or export a "
                "distilled model (loss.kind=distill) to denoise single images.")
        if len(images) != len(names):
            raise InputError(f"This model ({self.manifest['kind']}) takes "
                             + ("one image per slice; pass x1 only." if len(names) == 1 else
                                f"{len(names)} images per slice ({', '.join(names)})."))
        arrays = [self._prepare(x, name) for x, name in zip(images, names, strict=True)]
        if any(a.shape != arrays[0].shape for a in arrays):
            raise InputError(f"The inputs {', '.join(names)} differ in shape: "
                             f"{[a.shape for a in arrays]}.")
        scale = float(self.manifest["scale"])
        out: list[list[np.ndarray]] = [[] for _ in self.outputs]
        for start in range(0, arrays[0].shape[0], batch_size):
            batch = [a[start:start + batch_size] / scale for a in arrays]
            result = self.exported.call(self.params, *batch)
            # Both outputs are linear in the scale (the spread is a standard deviation).
            for acc, y in zip(out, result if len(out) > 1 else [result], strict=True):
                acc.append(np.asarray(y) * scale)
            if progress is not None:
                progress(batch[0].shape[0])
        ys = [np.concatenate(acc) for acc in out]
        return [y[..., 0] if np.ndim(images[0]) == 3 else y for y in ys]

    def _prepare(self, x: np.ndarray, name: str) -> np.ndarray:
        x = np.asarray(x, np.float32)
        channels = int(self.manifest["channels"])
        if x.ndim == 3 and channels == 1:
            x = x[..., None]
        if x.ndim != 4 or x.shape[-1] != channels:
            raise InputError(f"{name} has shape {x.shape}; expected [S, H, W, {channels}]"
                             + (" or [S, H, W]" if channels == 1 else "") + ".")
        if not np.all(np.isfinite(x)):
            bad = int(np.argmax(~np.all(np.isfinite(x), axis=(1, 2, 3))))
            raise InputError(f"{name}: slice {bad} holds NaN or inf values; repair the input.")
        return x

    def __repr__(self) -> str:
        m = self.manifest
        return (f"Model({m['kind']}, {m['modality']}, inputs {self.inputs}, units {m['units']}, "
                f"step {m['checkpoint']['step']})")


def _check_files(folder: Path, manifest: dict[str, Any]) -> None:
    """Refuses a missing file, or one whose SHA-256 differs from the manifest's."""
    for name in (FUNCTION, PARAMS):
        if not (folder / name).is_file():
            raise RunError(f"{folder / name} is missing; the exported model is incomplete: "
                           "export it again.")
    for name, expected in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            raise RunError(f"{path} is missing; the exported model is incomplete: export it "
                           "again.")
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != expected:
            raise RunError(f"{path} differs from what was exported (its SHA-256 is not the "
                           "manifest's): the file is damaged or was changed. Export the model "
                           "again.")


def _read_params(path: Path, exported: export.Exported, num_images: int) -> list[np.ndarray]:
    """The parameters in ``path``, checked against the function's arguments."""
    try:
        with np.load(path, allow_pickle=False) as f:
            names = sorted(f.files)
            params = [f[n] for n in names]
    except Exception as err:  # noqa: BLE001 - a damaged archive raises many error types
        raise RunError(f"{path} cannot be read ({type(err).__name__}: {err}); export the model "
                       "again.") from None
    specs = exported.in_avals[:len(exported.in_avals) - num_images]
    expected = [f"p{i:04d}" for i in range(len(specs))]
    if names != expected:
        lost = sorted(set(expected) - set(names))
        raise RunError(f"{path} holds {len(names)} parameter arrays, the exported function takes "
                       f"{len(specs)}" + (f" (missing {', '.join(lost[:5])})" if lost else "")
                       + "; export the model again.")
    for name, p, spec in zip(names, params, specs, strict=True):
        if tuple(p.shape) != tuple(spec.shape) or p.dtype != spec.dtype:
            raise RunError(f"{path}: array {name} is {p.dtype}{list(p.shape)}, the function "
                           f"takes {spec.dtype}{list(spec.shape)}; export the model again.")
    return params
