"""Ingestion: discover cases in a dataset layout, validate every file, write raw.json."""
