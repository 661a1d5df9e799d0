"""Quantization-aware fine-tuning: the network trains on the int8 numbers ``nars deploy --int8`` gives it.

What is fake-quantized mirrors ``nars.deploy.quantize`` (the same scopes, ``QAT_SCOPES``):

- **weights** of every convolution there, per output channel, symmetric int8 with the scale
  ``max|w| / 127``, as onnxruntime quantizes them. A batch norm folds into its convolution by
  a per-channel factor, which this quantization commutes with, so quantizing the unfolded
  weights during training is quantizing the deployed, folded ones. (The upsampling blocks'
  depthwise kernels are deployed as four sub-pixel kernels computed from them, quantized as
  computed; they are left to the activations' quantization.)
- **activations**: each block's output (a conv-norm-activation after its activation, an
  inverted residual after its addition), per tensor, asymmetric uint8, with moving-average
  min-max observers (``torch.ao.quantization.FakeQuantize``); the deploy's calibration then
  measures its ranges on the trained weights.

Gradients pass straight through the rounding (``torch.fake_quantize_*``). Nothing is added to
the model's state: its checkpoints stay plain FBNetV3IS checkpoints that any command loads
(observers start afresh when a run resumes), and the deployed graph is ``nars deploy --int8``'s.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver

from nars.model.blocks import ConvNormAct, InvertedResidual

QAT_SCOPES = ("backbone.", "rpn.head.rpn_feature.", "roi_heads.box_head.", "roi_heads.mask_head.feature_extractor.")
INT8_MAX = 127


def fake_quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` rounded to symmetric int8 per output channel (scale ``max|w| / 127``),
    in float, with straight-through gradients."""
    scale = weight.detach().abs().flatten(1).amax(1).clamp(min=1e-12) / INT8_MAX
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale.float(), zero, 0, -INT8_MAX, INT8_MAX)


def _quantized_conv_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, fake_quantize_weight(self.weight), self.bias, self.stride, self.padding, self.dilation,
                    self.groups)


class QuantizationAwareTraining:
    """Fake quantization switched on in a model (``enable``), its observers frozen later
    (``freeze_observers``, as d2go's DISABLE_OBSERVER_ITER), and switched off (``remove``)."""

    def __init__(self) -> None:
        self.convs: list[nn.Conv2d] = []
        self.activations: list[FakeQuantize] = []
        self._hooks: list[Any] = []

    def enable(self, model: nn.Module) -> QuantizationAwareTraining:
        """Fake-quantize ``model``'s network in place (module docstring)."""
        device = next(model.parameters()).device
        for name, module in model.named_modules():
            if not (name + ".").startswith(QAT_SCOPES):
                continue
            if isinstance(module, nn.Conv2d):
                module.forward = types.MethodType(_quantized_conv_forward, module)
                self.convs.append(module)
            if isinstance(module, (ConvNormAct, InvertedResidual)):
                fake = FakeQuantize(MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                                    qscheme=torch.per_tensor_affine).to(device)
                self.activations.append(fake)
                self._hooks.append(module.register_forward_hook(self._activation_hook(fake)))
        return self

    @staticmethod
    def _activation_hook(fake: FakeQuantize) -> Any:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
            # the ranges are learnt in training only: evaluating must not move them
            fake.observer_enabled[0] = int(module.training and not getattr(fake, "frozen", False))
            return fake(output)
        return hook

    def freeze_observers(self) -> None:
        """Keep the activation ranges as they are from now on (the last iterations train on fixed ranges)."""
        for fake in self.activations:
            fake.frozen = True

    def remove(self) -> None:
        for conv in self.convs:
            del conv.forward  # back to the class's forward
        for hook in self._hooks:
            hook.remove()
        self.convs, self.activations, self._hooks = [], [], []
