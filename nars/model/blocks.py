"""FBNet blocks as d2go builds them; child names follow its state dicts (``pw``, ``dw``, ...).

The inverted residual ("IRF") uses ``dw_skip_bnrelu=True`` and ``less_se_channels=False``:
no norm or activation after the depthwise conv, ReLU everywhere, sigmoid SE gate.
Initialisation is mobile_cv's too (``basic_blocks._init_conv_weight``): every conv built
as a ConvBNRelu gets Kaiming-normal (fan_out, ReLU) weights and zero biases; the SE's
second conv keeps PyTorch's default; norms start at weight 1, bias 0 (PyTorch's default).
"""

from __future__ import annotations

import functools
import types
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from nars.model.arch import BlockSpec, ir_widths

NormFactory = Callable[[int], nn.Module]


def init_conv(conv: nn.Conv2d) -> None:
    """mobile_cv's default ``kaiming_normal`` init: He-normal over fan_out, zero bias."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ConvNormAct(nn.Sequential):
    """conv -> optional norm (``bn``) -> optional ReLU: mobile_cv's ConvBNRelu."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        norm: Optional[NormFactory] = None,
        relu: bool = True,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=bias)
        init_conv(self.conv)
        if norm is not None:
            self.bn = norm(out_channels)
        if relu:
            self.relu = nn.ReLU(inplace=True)


class SqueezeExcite(nn.Module):
    """Global pool, 1x1 conv + ReLU to ``mid`` channels, 1x1 conv + sigmoid gate.

    The second conv keeps PyTorch's default init: mobile_cv builds it with ``weight_init=None``.
    """

    def __init__(self, channels: int, mid: int):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.se = nn.Sequential(
            ConvNormAct(channels, mid, bias=True),
            nn.Conv2d(mid, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.se(self.avg_pool(x))


def drop_connect_batch(x: torch.Tensor, rate: float) -> torch.Tensor:
    """mobile_cv's ``drop_connect_batch`` (``mobile_cv/arch/utils/misc.py``): each sample's
    tensor is zeroed with probability ``rate``, else divided by ``1 - rate`` (expectation kept)."""
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return x / keep * torch.floor(torch.rand(shape, dtype=x.dtype, device=x.device) + keep)


@functools.lru_cache(maxsize=None)
def _phase_map(kernel: int) -> torch.Tensor:
    """``[4, K*K, kernel*kernel]`` 0/1: which taps of a ``kernel``-wide conv run after 2x
    nearest upsampling land on which tap of a ``K``-wide conv on the input, per output phase
    (row parity, column parity). Upsampled row ``2i + a + t`` is input row ``i + (a + t) // 2``."""
    p = kernel // 2
    offsets = [[(a + t) // 2 for t in range(-p, p + 1)] for a in (0, 1)]
    q = max(abs(o) for row in offsets for o in row)
    size = 2 * q + 1
    phase_map = torch.zeros(4, size * size, kernel * kernel)
    for a in (0, 1):
        for b in (0, 1):
            for ti, u in enumerate(offsets[a]):
                for tj, v in enumerate(offsets[b]):
                    phase_map[2 * a + b, (u + q) * size + v + q, ti * kernel + tj] = 1.0
    return phase_map


def subpixel_kernels(weight: torch.Tensor) -> torch.Tensor:
    """A depthwise kernel ``[C, 1, k, k]`` meant for a 2x nearest-upsampled input as the four
    kernels ``[4, C, 1, K, K]`` (K odd, padding K // 2) that compute each output phase from the
    input itself; differentiable, so training updates the one original kernel."""
    c, _, k, _ = weight.shape
    phase_map = _phase_map(k).to(weight)  # cached: never written to
    size = int(phase_map.shape[1] ** 0.5)
    return torch.einsum("psk,ck->pcs", phase_map, weight.reshape(c, k * k)).reshape(4, c, 1, size, size)


def interleave_phases(phases: list[torch.Tensor]) -> torch.Tensor:
    """Four ``[N, C, H, W]`` phase maps (row parity, column parity) as one ``[N, C, 2H, 2W]``.

    N stays the first dimension of every reshape: an exported graph's Reshape reads a target
    size of 0 as "copy the input's dimension here", which is only right where that is N (an
    empty batch: no detections for the mask head)."""
    y = torch.stack(phases, dim=2)
    n, c, _, h, w = y.shape
    return F.pixel_shuffle(y.reshape(n, 4 * c, h, w), 2)  # DepthToSpace in ONNX: one pass, no 6-d transpose


class InvertedResidual(nn.Module):
    """pw expand (absent when the mid width equals the input's) -> [x2 upsample] -> KxK dw
    -> [SE] -> pwl project (+ skip). Widths from ``arch.ir_widths``, shared with the cost model.

    A block that upsamples (stride -2: d2go's x2 nearest before the depthwise conv) computes
    the four output phases of ``dw(upsample(x))`` at the input's resolution
    (:func:`subpixel_kernels`) and, without SE, also ``pwl``'s conv per phase, interleaving only
    its narrower output before the norm: the same function up to float rounding, without the
    upsampled ``mid``-channel tensors (the mask head's 768 and 384 channels at 14x14 and 28x28:
    most of its memory traffic: the mask head 1.4x faster at 100 RoIs, training steps 1.2x,
    BENCHMARKS.md).

    ``drop_connect_rate`` is mobile_cv's stochastic depth: IRFBlock hands it to
    ``build_residual_connect``, which adds ``AddWithDropConnect`` only where the residual exists
    (stride 1, in == out); that drops its first argument, the branch (``res_conn(y, x)``), and
    only in training. FBNetBuilder passes the rate to every block as given (no scaling by
    depth: that is the opt-in ``add_drop_connect_args`` helper, which d2go does not call).
    """

    def __init__(self, in_channels: int, spec: BlockSpec, norm: NormFactory, divisor: int = 8,
                 drop_connect_rate: float = 0.0):
        super().__init__()
        widths = ir_widths(in_channels, spec, divisor)
        mid = widths.mid
        self.pw = ConvNormAct(in_channels, mid, norm=norm) if widths.has_pw else None
        self.upsample = spec.stride == -2
        self.dw = ConvNormAct(mid, mid, spec.kernel, stride=max(spec.stride, 1), groups=mid, relu=False)
        self.se = SqueezeExcite(mid, widths.se_mid) if widths.se_mid is not None else None
        self.pwl = ConvNormAct(mid, spec.out_channels, norm=norm, relu=False)
        self.use_residual = spec.stride == 1 and in_channels == spec.out_channels
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.pw is not None:
            y = self.pw(y)
        if self.upsample:
            return self._upsampling_forward(y)
        y = self.dw(y)
        if self.se is not None:
            y = self.se(y)
        y = self.pwl(y)
        if not self.use_residual:
            return y
        if self.training and self.drop_connect_rate > 0:
            y = drop_connect_batch(y, self.drop_connect_rate)
        return x + y

    def _upsampling_forward(self, y: torch.Tensor) -> torch.Tensor:
        conv = self.dw.conv
        kernels = subpixel_kernels(conv.weight)
        padding = kernels.shape[-1] // 2
        phases = [F.conv2d(y, k, None, 1, padding, 1, conv.groups) for k in kernels]
        if self.se is None:
            y = interleave_phases([self.pwl.conv(p) for p in phases])
            for layer in list(self.pwl.children())[1:]:  # the norm (pwl has no activation)
                y = layer(y)
            return y
        return self.pwl(self.se(interleave_phases(phases)))


def _upsample_then_dw(block: InvertedResidual, x: torch.Tensor) -> torch.Tensor:
    y = block.pw(x) if block.pw is not None else x
    y = block.dw(F.interpolate(y, scale_factor=2, mode="nearest"))
    return block.pwl(block.se(y) if block.se is not None else y)


def use_d2go_upsampling(model: nn.Module) -> nn.Module:
    """``model`` (in place) with its upsampling blocks computed as d2go writes them: pw -> 2x
    nearest -> dw -> [SE] -> pwl. The definition the sub-pixel path must equal (tests), the
    "before" of bench_model_cost, and what FlopCounterMode must see to count d2go's MACs
    (the sub-pixel kernels skip the taps that repeat, fewer MACs for kernels of 5 and 7)."""
    for m in model.modules():
        if isinstance(m, InvertedResidual) and m.upsample:
            m.forward = types.MethodType(_upsample_then_dw, m)
    return model
