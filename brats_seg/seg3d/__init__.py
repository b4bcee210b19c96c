"""seg3d."""
