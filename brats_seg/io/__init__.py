"""Volumes, geometry, NIfTI headers, label conventions and manifests: the files every stage reads and writes."""
