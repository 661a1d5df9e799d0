"""Quantization-aware fine-tuning (nars.model.qat, ``QUANTIZATION.QAT``): what it fake-quantizes,
that it commutes with batch-norm folding, that it leaves checkpoints plain, and the training
option end to end. How much AP it saves over post-training quantization is a measurement
(bench/bench_qat.py, BENCHMARKS.md)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from engine_helpers import TINY_TRAIN, data_overrides, make_shapes, one_thread
from nars.cli import main
from nars.config import load_config
from nars.engine.events import read_metrics
from nars.model.blocks import ConvNormAct, InvertedResidual
from nars.model.fbnetv3is import build_model
from nars.model.qat import QAT_SCOPES, QuantizationAwareTraining, fake_quantize_weight
from nars.model.weights import read_checkpoint


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def test_weight_quantization_is_int8_per_channel_and_commutes_with_bn_folding():
    torch.manual_seed(0)
    weight = torch.randn(6, 4, 3, 3) * torch.logspace(-3, 1, 6)[:, None, None, None]
    quantized = fake_quantize_weight(weight)
    for w, q in zip(weight, quantized):  # each channel on its own grid of 255 steps, max|w| kept
        step = w.abs().max() / 127
        assert torch.allclose(q / step, (q / step).round(), atol=1e-3) and (q - w).abs().max() <= step / 2 + 1e-7
    fold = torch.rand(6) + 0.1  # a batch norm's gamma / sqrt(var + eps), per output channel
    assert torch.allclose(fake_quantize_weight(weight * fold[:, None, None, None]),
                          quantized * fold[:, None, None, None], rtol=1e-5, atol=1e-9)
    weight.requires_grad_(True)
    fake_quantize_weight(weight).sum().backward()  # straight through
    assert torch.equal(weight.grad, torch.ones_like(weight))


def test_fake_quantization_covers_the_network_and_is_removed_cleanly(tiny_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    image = [torch.rand(3, 64, 64)]
    keys = set(model.state_dict())
    with torch.no_grad():
        before = model.backbone(image[0][None])
    qat = QuantizationAwareTraining().enable(model)
    inside = [name for name, m in model.named_modules() if (name + ".").startswith(QAT_SCOPES)]
    assert len(qat.convs) == sum(isinstance(m, torch.nn.Conv2d) for n, m in model.named_modules() if n in inside)
    assert len(qat.activations) == sum(isinstance(m, (ConvNormAct, InvertedResidual))
                                       for n, m in model.named_modules() if n in inside)
    assert all(not n.startswith(("roi_heads.box_predictor", "roi_heads.mask_head.predictor", "rpn.head.rpn_regressor"))
               for n, m in model.named_modules() if any(m is c for c in qat.convs))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model.backbone(image[0][None])  # the observers learn the ranges in training
    model.eval()
    model.load_state_dict(state)  # the batch norms' statistics as they were
    with torch.no_grad():
        fake = model.backbone(image[0][None])
    assert any(not torch.equal(before[k], fake[k]) for k in before)
    assert set(model.state_dict()) == keys, "no state added: checkpoints stay plain"
    qat.remove()
    with torch.no_grad():
        after = model.backbone(image[0][None])
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_qat_training_option_end_to_end(tmp_path, capsys):
    shapes = make_shapes(tmp_path / "shapes", train=4, val=2)
    cfg = load_config(None, TINY_TRAIN + data_overrides(shapes))
    (tmp_path / "tiny.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    assert main(["train", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run"), "SOLVER.MAX_ITER", "6",
                 "QUANTIZATION.QAT.ENABLED", "true", "QUANTIZATION.QAT.START_ITER", "2",
                 "QUANTIZATION.QAT.DISABLE_OBSERVER_ITER", "4"]) == 0
    assert "iteration 2: quantization-aware training starts" in capsys.readouterr().err
    losses = [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert losses and all(math.isfinite(loss) for loss in losses)
    checkpoint = read_checkpoint(tmp_path / "run" / "model_final.pth")
    assert set(checkpoint["model"]) == set(build_model(cfg).state_dict())
    config = str(tmp_path / "run" / "config.yaml")
    assert main(["deploy", config, "--weights", str(tmp_path / "run" / "model_final.pth"), "--onnx",
                 str(tmp_path / "q.onnx"), "--int8", "--calibration-count", "2", "--no-eval"]) == 0
    assert "int8:" in capsys.readouterr().out
    assert main(["train", config, "--out", str(tmp_path / "bad"), "QUANTIZATION.QAT.START_ITER", "-1"]) == 2
    assert "QUANTIZATION.QAT.START_ITER must be >= 0, got -1" in capsys.readouterr().err
