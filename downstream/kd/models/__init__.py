"""Recipe architectures written here (no library ships them): the hybrid ViT + ConvNeXt teacher
(paper 000), MBCSA / DFLT of HDKD (paper 001), CSA-MoE-Net (paper 004); the rest is timm."""

from downstream.kd.models.csa_moe import CrossStageAttention, CSAMoENet
from downstream.kd.models.hdkd import MBCSA, HDKDStudent, HDKDTeacher
from downstream.kd.models.hybrid_teacher import HybridViTConvNeXt

__all__ = ["CSAMoENet", "CrossStageAttention", "HDKDStudent", "HDKDTeacher", "HybridViTConvNeXt", "MBCSA"]
