"""Backbones, prompt insertion, the semi-implicit prompt generator and the SIVI loss.

Pure PyTorch: no Ray here.
"""

from .backbone import BUILTIN_NAME, create_backbone, normalize
from .prompted_vit import PromptedViT

__all__ = ["BUILTIN_NAME", "PromptedViT", "create_backbone", "normalize"]
