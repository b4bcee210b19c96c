"""Pipelines as files: run the stages a YAML declares, skipping those whose outputs are current."""
