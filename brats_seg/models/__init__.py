"""Model registry and architectures (3D Attention U-Net, 2D FCN and DeepLabV3+)."""
from brats_seg.models.registry import available_models, create_model, register_model

__all__ = ["available_models", "create_model", "register_model"]
