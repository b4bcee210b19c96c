"""Shared mechanisms with no domain knowledge: atomic writes, locks, shards, hashing, YAML, figures."""
