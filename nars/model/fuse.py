"""FBNetV3IS for inference: every batch norm folded into the convolution before it.

At test time a batch norm is a fixed per-channel affine map, so ``bn(conv(x))`` equals one
convolution with scaled weights and a bias (``torch.nn.utils.fusion``). Folding removes
one memory pass per norm (FBNetV3A has about 100) and is what an exported model should
carry. Only norms whose statistics are fixed fold: BatchNorm in eval mode (BN, SyncBN,
NaiveSyncBN) and FrozenBatchNorm2d; GroupNorm normalises by each input's own statistics
and stays. Outputs change only by float32 rounding (tests/test_fuse.py).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops import FrozenBatchNorm2d

from nars.model.blocks import ConvNormAct

FOLDABLE = (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)


def fold_norm(block: ConvNormAct) -> bool:
    """Fold ``block.bn`` into ``block.conv`` in place (the norm becomes an Identity);
    False when the block has no foldable norm."""
    bn = getattr(block, "bn", None)
    if not isinstance(bn, FOLDABLE):
        return False
    conv = block.conv
    weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                        bn.weight, bn.bias)
    conv.weight, conv.bias = weight, bias
    block.bn = nn.Identity()
    return True


@torch.no_grad()
def fuse_for_inference(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with every foldable norm folded (in place); returned for chaining.

    The model can no longer train: its norms are gone (fold a copy to keep the original)."""
    model.eval()
    for module in model.modules():
        if isinstance(module, ConvNormAct):
            fold_norm(module)
    return model

