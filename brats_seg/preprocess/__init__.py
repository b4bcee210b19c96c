"""Preprocessing stage: reorient, crop, resample and normalise cases into arrays training reads."""
