"""Experiment configs: ``get_config()`` ConfigDicts; variants import a default and change deltas."""
