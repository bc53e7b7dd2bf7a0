"""MRI data config: a preset of the ``mri_consensus`` builder, for ``python -m data_prep.mri``.

  python -m data_prep.mri --config=configs/data/mri.py:quick   # short: --config=quick
  python -m data_prep.mri --config=quick --config.snr=30 --config.name=quick_snr30
  python -m data_prep.mri --config=quick --calibrate       # baselines vs the simulated SNR

Presets (PRESETS in data_prep/mri_consensus/mri_consensus_dataset_builder.py): tiny, quick, knee,
mni, fastmri; quick, knee and mni simulate the noise level calibrated against the baselines
(``--calibrate``, docs/mri_calibration.md), and quick_snr100, knee_snr100 and mni_snr100 the
earlier low-noise setting. The fields are MriConfig's; a changed config is checked by MriConfig.validate() and
needs a new --config.name, never a preset's.
"""

import ml_collections

from data_prep.cli import preset_config


def get_config(preset: str = "quick") -> ml_collections.ConfigDict:
    from data_prep.mri_consensus.mri_consensus_dataset_builder import PRESETS

    return preset_config(PRESETS, preset)
