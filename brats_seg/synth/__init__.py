"""Synthetic BraTS-like phantoms (images and label maps) for the demo and the tests."""
