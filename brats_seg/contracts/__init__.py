"""Typed, range-checked models of the files the pipeline reads (manifests, stage files, dataset.json)."""
