"""3D BraTS segmentation task: config, dataset, patch sampling, augmentation, losses, validation."""
