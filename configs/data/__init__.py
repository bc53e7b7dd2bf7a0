"""Data configs of ``python -m data_prep.ct`` / ``data_prep.mri``: ``get_config(preset)`` gives a
builder preset as a ConfigDict (``--config=configs/data/ct.py:quick``, or just ``--config=quick``)."""
