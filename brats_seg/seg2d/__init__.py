"""2D natural-image side: datasets, joint transforms, palettes, mIoU, distillation, int8 quantization."""
