"""brats-seg: a staged pipeline for 3D brain tumour segmentation (BraTS) and 2D segmentation."""

__version__ = "0.1.0"
