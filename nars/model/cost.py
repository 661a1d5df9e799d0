"""Analytic cost model: learnable parameters and MFLOPs of an FBNetV3IS spec, no modules built.

MFLOPs are multiply-adds of convolutions and linear layers (the FBNet convention; also
what ``FlopCounterMode`` counts, divided by 2). Norms are counted as 2 parameters per
channel (BN/GN affine), so the count is the architecture's size whatever NORM is used.
Fast enough (pure integer arithmetic) to score thousands of candidates per second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from nars.config import get
from nars.model.arch import ArchSpec, BlockSpec, Stage, blocks, ir_widths, resolve_arch

# The config keys the cost of a model depends on, besides MODEL.FBNET_V2.ARCH.
COST_KEYS = (
    "MODEL.ROI_HEADS.NUM_CLASSES",
    "MODEL.ANCHOR_GENERATOR.SIZES",
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS",
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION",
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "MODEL.FBNET_V2.WIDTH_DIVISOR",
    "INPUT.MIN_SIZE_TEST",
    "INPUT.MAX_SIZE_TEST",
    "TEST.DETECTIONS_PER_IMAGE",
)
# ... and those its latency depends on too: the norm (BN folds into convolutions at
# inference, GN does not; predictor.latency reads it beside the costs).
LATENCY_KEYS = COST_KEYS + ("MODEL.FBNET_V2.NORM",)


@dataclass
class PartCost:
    params: int = 0
    macs: int = 0  # multiply-adds at the part's input resolution (per RoI for RoI heads)
    # What latency depends on besides multiply-adds (nars.deploy's latency predictor): the
    # depthwise share (memory-bound on CPUs), the elements the convolutions write (memory
    # traffic; norms and activations touch each once) and the block count (per-call overhead).
    dw_macs: int = 0
    activations: int = 0
    blocks: int = 0

    def add(self, other: "PartCost") -> None:
        for name in ("params", "macs", "dw_macs", "activations", "blocks"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(frozen=True)
class BlockRecord:
    """One single block as the model runs it: spec, input and output shapes, cost (per RoI
    in the RoI heads); what a per-block latency model reads (predictor.latency)."""

    spec: BlockSpec
    cin: int
    h: int
    w: int
    cout: int
    ho: int
    wo: int
    cost: PartCost


@dataclass
class ModelCost:
    """Parameters per part as d2go splits them, and MFLOPs (multiply-adds / 1e6)."""

    params: dict[str, int] = field(default_factory=dict)
    mflops: dict[str, float] = field(default_factory=dict)
    # per part (trunk, rpn, box_head with its predictor, mask_head with its logits), the RoI
    # heads per RoI; with the RoI counts the totals were taken at
    parts: dict[str, PartCost] = field(default_factory=dict)
    blocks: dict[str, list[BlockRecord]] = field(default_factory=dict)  # per part, in the model's order
    rois: int = 0
    mask_rois: int = 0

    def to_dict(self) -> dict:
        return {"params": dict(self.params), "mflops": dict(self.mflops)}


def _out_size(size: int, kernel: int, stride: int) -> int:
    if stride == -2:
        return size * 2
    pad = kernel // 2
    return (size + 2 * pad - kernel) // stride + 1


def block_cost(spec: BlockSpec, cin: int, h: int, w: int, divisor: int) -> tuple[PartCost, int, int, int]:
    """Cost of one single block; returns (cost, out channels, out h, out w)."""
    cout = spec.out_channels  # as written: mobile_cv rounds only inner widths at width_ratio 1
    k2 = spec.kernel * spec.kernel
    if spec.kind == "conv":
        ho, wo = _out_size(h, spec.kernel, spec.stride), _out_size(w, spec.kernel, spec.stride)
        return PartCost(cin * cout * k2 + cout + 2 * cout, ho * wo * cout * cin * k2, 0, ho * wo * cout, 1), cout, ho, wo
    params = macs = activations = 0
    widths = ir_widths(cin, spec, divisor)
    mid = widths.mid
    if widths.has_pw:
        params += cin * mid + 2 * mid
        macs += h * w * cin * mid
        activations += h * w * mid
    if spec.stride == -2:
        h, w = 2 * h, 2 * w
    ho, wo = _out_size(h, spec.kernel, max(spec.stride, 1)), _out_size(w, spec.kernel, max(spec.stride, 1))
    params += mid * k2
    dw_macs = ho * wo * mid * k2
    macs += dw_macs
    if widths.se_mid is not None:
        se_mid = widths.se_mid
        params += 2 * mid * se_mid + se_mid + mid
        macs += 2 * mid * se_mid
        activations += ho * wo * mid  # the gated copy
    params += mid * cout + 2 * cout
    macs += ho * wo * mid * cout
    activations += ho * wo * (mid + cout)
    return PartCost(params, macs, dw_macs, activations, 1), cout, ho, wo


def stages_cost(stages: Sequence[Stage], cin: int, h: int, w: int, divisor: int,
                record: list[BlockRecord] | None = None) -> tuple[PartCost, int, int, int]:
    """The stages' total cost and output shape; each single block appended to ``record``."""
    total = PartCost()
    for stage in blocks(stages):
        for spec in stage:
            cost, cout, ho, wo = block_cost(spec, cin, h, w, divisor)
            if record is not None:
                record.append(BlockRecord(spec, cin, h, w, cout, ho, wo, cost))
            total.add(cost)
            cin, h, w = cout, ho, wo
    return total, cin, h, w


def head_costs(rc: Any, fh: Any, fw: Any, bc: Any, mc: Any, mh: Any, mw: Any, num_classes: Any,
               num_anchors: Any) -> dict[str, tuple[Any, Any]]:
    """(params, multiply-adds) of the layers outside the blocks: the RPN's objectness and box
    convs on its ``rc x fh x fw`` features, the box predictor on ``bc`` features, the mask
    logits on ``mc x mh x mw``. Plain arithmetic, so numpy arrays work too (the batch cost)."""
    return {
        "rpn": (rc * num_anchors * 5 + num_anchors * 5, fh * fw * rc * num_anchors * 5),
        "box_predictor": (bc * (num_classes + 1) + (num_classes + 1) + bc * 4 * num_classes + 4 * num_classes,
                          bc * (num_classes + 1) + bc * 4 * num_classes),
        "mask_logits": (mc * num_classes + num_classes, mh * mw * mc * num_classes),
    }


def model_cost(
    arch: ArchSpec,
    num_classes: int = 80,
    input_size: tuple[int, int] = (224, 224),
    *,
    num_anchors: int = 15,
    box_resolution: int = 6,
    mask_resolution: int = 14,
    rois: int = 30,
    mask_rois: int = 30,
    divisor: int = 8,
) -> ModelCost:
    """Params per part and MFLOPs: trunk and RPN at ``input_size``; box head (with predictor)
    over ``rois`` proposals and mask head over ``mask_rois`` detections; total is their sum."""
    h, w = input_size
    trunk = PartCost()
    cin = 3
    per_stage = []
    records: dict[str, list[BlockRecord]] = {part: [] for part in ("trunk", "rpn", "box_head", "mask_head")}
    for stage in arch.trunk:
        cost, cin, h, w = stages_cost((stage,), cin, h, w, divisor, records["trunk"])
        per_stage.append(cost.params)
        trunk.add(cost)
    feat = cin
    rpn, rc, fh, fw = stages_cost(arch.rpn, feat, h, w, divisor, records["rpn"])
    box, bc, _, _ = stages_cost(arch.box_head, feat, box_resolution, box_resolution, divisor, records["box_head"])
    mask, mc, mh, mw = stages_cost(arch.mask_head, feat, mask_resolution, mask_resolution, divisor,
                                   records["mask_head"])
    heads = head_costs(rc, fh, fw, bc, mc, mh, mw, num_classes, num_anchors)
    rpn.params, rpn.macs = rpn.params + heads["rpn"][0], rpn.macs + heads["rpn"][1]
    rpn.activations += fh * fw * num_anchors * 5
    predictor_params, predictor_macs = heads["box_predictor"]
    mask.params, mask.macs = mask.params + heads["mask_logits"][0], mask.macs + heads["mask_logits"][1]
    mask.activations += mh * mw * num_classes
    params = {
        "trunk": trunk.params,
        **{f"trunk{i}": p for i, p in enumerate(per_stage)},
        "rpn": rpn.params,
        "box_head": box.params,
        "box_predictor": predictor_params,
        "mask_head": mask.params,
    }
    params["total"] = trunk.params + rpn.params + box.params + predictor_params + mask.params
    mflops = {
        "trunk": trunk.macs / 1e6,
        "rpn": rpn.macs / 1e6,
        "box_head_per_roi": (box.macs + predictor_macs) / 1e6,
        "mask_head_per_roi": mask.macs / 1e6,
    }
    mflops["total"] = (
        mflops["trunk"] + mflops["rpn"] + rois * mflops["box_head_per_roi"] + mask_rois * mflops["mask_head_per_roi"]
    )
    box_part = PartCost(box.params + predictor_params, box.macs + predictor_macs, box.dw_macs,
                        box.activations + 5 * num_classes + 1, box.blocks)
    parts = {"trunk": trunk, "rpn": rpn, "box_head": box_part, "mask_head": mask}
    return ModelCost(params=params, mflops=mflops, parts=parts, blocks=records, rois=rois, mask_rois=mask_rois)


def test_input_size(cfg: Mapping[str, Any]) -> tuple[int, int]:
    """The square input a config's test resize makes: MIN_SIZE_TEST, capped by MAX_SIZE_TEST."""
    side = min(get(cfg, "INPUT.MIN_SIZE_TEST"), get(cfg, "INPUT.MAX_SIZE_TEST"))
    return side, side


def config_cost(
    cfg: Mapping[str, Any], arch: ArchSpec | None = None, input_size: tuple[int, int] | None = None
) -> ModelCost:
    """The cost of the model a config builds: the one place a cost is taken from a config
    (search space, ``nars model info``, the run store, export).

    ``cfg`` needs ``COST_KEYS`` (a complete config has them) and the arch, unless ``arch`` is
    given already parsed. The input is ``test_input_size(cfg)`` unless ``input_size`` is
    given; the box head runs on POST_NMS_TOPK_TEST RoIs, the mask head on as many of them as
    DETECTIONS_PER_IMAGE allows.
    """
    arch = arch if arch is not None else resolve_arch(get(cfg, "MODEL.FBNET_V2.ARCH"))
    return model_cost(arch, **cost_settings(cfg, input_size))


def cost_settings(cfg: Mapping[str, Any], input_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """``model_cost``'s arguments besides the arch, read from a config's ``COST_KEYS`` as
    ``config_cost`` reads them (one place; search_spaces.batch_cost takes them too)."""
    rois = get(cfg, "MODEL.RPN.POST_NMS_TOPK_TEST")
    anchors = len(get(cfg, "MODEL.ANCHOR_GENERATOR.SIZES")[0]) * len(get(cfg, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS")[0])
    return {
        "num_classes": get(cfg, "MODEL.ROI_HEADS.NUM_CLASSES"),
        "input_size": input_size or test_input_size(cfg),
        "num_anchors": anchors,
        "box_resolution": get(cfg, "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION"),
        "mask_resolution": get(cfg, "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION"),
        "rois": rois,
        "mask_rois": min(rois, get(cfg, "TEST.DETECTIONS_PER_IMAGE")),
        "divisor": get(cfg, "MODEL.FBNET_V2.WIDTH_DIVISOR"),
    }
