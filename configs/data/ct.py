"""CT data config: a preset of the ``ct_consensus`` builder, for ``python -m data_prep.ct``.

  python -m data_prep.ct --config=configs/data/ct.py:quick     # short: --config=quick
  python -m data_prep.ct --config=quick --config.photons_per_ray=1e4 --config.name=quick_i0_1e4

Presets (PRESETS in data_prep/ct_consensus/ct_consensus_dataset_builder.py): tiny, quick, paper,
dicom, numpy, and quick_k3 / quick_k4 (the quick set split into K = 3 / 4 view subsets;
--config.num_splits=K splits any preset, under a new --config.name). The fields are CtConfig's (lengths in mm; pixel_size_mm None: 380 mm / size_px). A
config that differs from its preset needs a new --config.name, never a preset's.
"""

import ml_collections

from data_prep.cli import preset_config


def get_config(preset: str = "quick") -> ml_collections.ConfigDict:
    from data_prep.ct_consensus.ct_consensus_dataset_builder import PRESETS

    return preset_config(PRESETS, preset)
