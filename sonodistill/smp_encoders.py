"""Which timm backbones segmentation-models-pytorch builds as its own encoders.

A timm ResNet's state dict loads strictly into smp's encoder of the same name; any other timm
backbone goes through smp's ``tu-NAME`` wrapper, which hands the weights to timm's loader. Both the
downstream U-Net and the exported model card's snippet follow this rule.
"""

SMP_NATIVE = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
