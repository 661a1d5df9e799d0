"""int8 FBNetV3IS: an :func:`nars.deploy.onnx.export_onnx` graph statically quantized by onnxruntime.

The graph is first simplified (``quant_pre_process``: shape inference, constant folding),
then quantized in onnxruntime's QDQ format: QuantizeLinear / DequantizeLinear pairs around
the quantized nodes, which onnxruntime fuses into integer kernels (``QLinearConv`` ...) when
it loads the file, and which other runtimes read as well.

What is int8: the network, every node of the trunk and of the RPN, box and mask heads' blocks
(``QUANTIZED_SCOPES``) of the kinds in ``QUANTIZED_OPS``: convolutions and fully connected
layers with int8 weights per output channel (symmetric), and between them the ReLUs,
residual additions, squeeze-excitation and the mask head's sub-pixel reshapes on uint8
activations, each tensor's range calibrated (min-max) on the user's own images. That is
about 96% of FBNetV3_A_dsmask's multiply-adds at 100 detections (97% at 10).

What stays float, and why:

- **The resize and normalisation.** The resize is already integer arithmetic (PIL's filter,
  bit-exact); the normalised image is quantized at the first convolution's input.
- **The predictors** (RPN objectness and deltas, class scores, box deltas, mask logits). Their
  outputs are what top-k, NMS, the score threshold and the mask's 0.5 threshold compare:
  8-bit steps there would tie scores and move box edges and mask borders by whole steps. The
  mask logits (one 1x1 conv per class at 28x28) are most of the remaining 3-4%.
- **Anchors, box decoding, NMS, top-k, RoIAlign and the mask paste.** They work on pixel
  coordinates, which need more than 8 bits (256 levels over a 320-pixel side are 1.25 px per
  step), and resample at sub-pixel positions; onnxruntime's RoiAlign has float kernels only.
  With the predictors and the graph's shape arithmetic they are about half of the int8
  graph's time at 10 detections, which bounds int8's speed-up there (BENCHMARKS.md).
"""

from __future__ import annotations

import logging
from collections import Counter
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from tqdm import tqdm

from nars.data.coco import dataset_from_config
from nars.data.images import UnreadableImage, read_rgb
from nars.deploy.onnx import INPUT_NAME, PRECISION_KEY, read_metadata, with_metadata
from nars.errors import UserError
from nars.fileio import atomic_write_bytes

# node-name prefixes of the network's modules in the TorchScript exporter's graph
QUANTIZED_SCOPES = ("/backbone/", "/rpn/head/rpn_feature/", "/roi_heads/box_head/",
                    "/roi_heads/mask_head/feature_extractor/")
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul", "Relu", "Clip", "Add", "Mul", "GlobalAveragePool", "Sigmoid",
                 "HardSigmoid", "Concat", "Reshape", "Transpose", "Flatten")
CALIBRATION_COUNT = 64
_ORT_LOGGER = "root"  # onnxruntime's quantization tool logs to the root logger


@dataclass(frozen=True)
class QuantizedGraph:
    """What :func:`quantize_graph` wrote: quantized nodes by op type, and the calibration."""

    int8_nodes: dict[str, int]
    calibration_images: int

    def summary(self) -> str:
        """One line for the CLI."""
        kinds = ", ".join(f"{n} {op}" for op, n in sorted(self.int8_nodes.items(), key=lambda kv: -kv[1]))
        return (f"int8: {sum(self.int8_nodes.values())} nodes of the trunk and the RPN, box and mask heads ({kinds}); "
                f"float: resize, predictors, box decoding, NMS, RoIAlign, paste; calibrated on "
                f"{self.calibration_images} images")


def check_count(count: int) -> int:
    """``count`` when it is a usable number of calibration images."""
    if count < 1:
        raise UserError(f"--calibration-count must be >= 1, got {count}")
    return count


def training_images(cfg: Mapping[str, Any]) -> list[Path]:
    """DATASETS.TRAIN's image files: the calibration set when none is given."""
    try:
        return [Path(p) for p in dataset_from_config(cfg, "TRAIN", train=False).image_paths()]
    except UserError as e:
        raise UserError(f"--int8 calibrates on DATASETS.TRAIN's images, which cannot be read ({e}); "
                        "pass --calibration IMAGE_OR_FOLDER") from None


def calibration_images(sources: Sequence[Path], count: int, seed: int = 0) -> list[Path]:
    """``count`` of ``sources`` (all of them when fewer), drawn at random (seeded), in their
    order; each is decoded once here, so an unreadable file is an error now, not mid-way."""
    check_count(count)
    if not sources:
        raise UserError("no calibration images: pass --calibration IMAGE_OR_FOLDER")
    picked = sorted(np.random.default_rng(seed).permutation(len(sources))[:count])
    chosen = [Path(sources[i]) for i in picked]
    for path in chosen:
        try:
            read_rgb(path)
        except UnreadableImage as e:
            raise UserError(f"{path}: unreadable calibration image ({e})") from None
    return chosen


class _Images(CalibrationDataReader):
    """The graph's input (uint8 RGB [3, H, W]) for each calibration image: a file, decoded
    when its turn comes, or the input itself."""

    def __init__(self, images: Sequence[Path | np.ndarray], input_name: str, on_image: Callable[..., object]):
        self._images: Iterator[Path | np.ndarray] = iter(images)
        self._input_name, self._on_image = input_name, on_image

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._images, None)
        if image is None:
            return None
        self._on_image()
        pixels = image if isinstance(image, np.ndarray) else np.asarray(read_rgb(image)).transpose(2, 0, 1)
        return {self._input_name: np.ascontiguousarray(pixels)}


def int8_nodes(model: onnx.ModelProto) -> list[str]:
    """The names of the nodes to quantize (module docstring)."""
    return [n.name for n in model.graph.node if n.name.startswith(QUANTIZED_SCOPES) and n.op_type in QUANTIZED_OPS]


def quantize_graph(fp32_path: str | Path, out_path: str | Path, images: Sequence[Path | np.ndarray],
                   progress: bool = False) -> QuantizedGraph:
    """``fp32_path`` (an ``export_onnx`` file) quantized to ``out_path`` (atomically; it may be
    ``fp32_path``), activations calibrated on ``images`` (files, or the graph's uint8 inputs;
    a progress bar with ``progress``); its metadata is kept, with ``nars.precision`` int8."""
    source = onnx.load(str(fp32_path))
    root = logging.getLogger(_ORT_LOGGER)
    level = root.level
    root.setLevel(logging.ERROR)  # the tool's per-tensor notes and its "consider pre-processing" hint
    try:
        with tempfile.TemporaryDirectory(prefix="nars-int8-") as tmp:
            simple = Path(tmp) / "simplified.onnx"
            quant_pre_process(str(fp32_path), str(simple), skip_symbolic_shape=True)
            simplified = onnx.load(str(simple))
            nodes = int8_nodes(simplified)
            quantized = Path(tmp) / "int8.onnx"
            bar = tqdm(total=len(images), desc="calibration", unit="image", disable=not progress, dynamic_ncols=True)
            quantize_static(
                str(simple), str(quantized), _Images(images, INPUT_NAME, bar.update), quant_format=QuantFormat.QDQ,
                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax, nodes_to_quantize=nodes,
                op_types_to_quantize=list(QUANTIZED_OPS),
            )  # min-max calibration reduces each tensor in the graph: a few numbers per image are kept
            bar.close()
            model = onnx.load(str(quantized))
    finally:
        root.setLevel(level)
    # the inferred shapes go: given them, onnxruntime rewrites the box clipping's Reshape to
    # (0, -1), which fails on an image without detections (the fp32 export carries none either)
    del model.graph.value_info[:]
    metadata = {**read_metadata(source), PRECISION_KEY: "int8", "nars.calibration_images": str(len(images))}
    atomic_write_bytes(Path(out_path), with_metadata(model, metadata).SerializeToString(), "the int8 ONNX model")
    kinds = {n.name: n.op_type for n in simplified.graph.node}
    return QuantizedGraph(dict(Counter(kinds[name] for name in nodes)), len(images))

