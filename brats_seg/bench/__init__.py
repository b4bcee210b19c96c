"""Benchmarks: each stage's speed and results side by side against a reference implementation."""
