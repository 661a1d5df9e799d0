"""Latency: measuring (nars.deploy.latency, nars model latency), the per-machine latency
predictor and its cache (predictor.latency), and sampling under a latency limit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nars.cli import main
from nars.config import load_config, set_key
from nars.deploy.latency import measure_latencies, measure_latency
from nars.errors import UserError
from predictor.latency import (BLOCK_FEATURES, FEATURES, KINDS, OVERHEAD, LatencyPredictor, cache_key,
                               config_features, fit_space_latency)
from search_spaces import load_space, sample

# the tiny search's pinned keys: 64 px images (tests/data/tiny_search.yaml)
PINNED = {"INPUT.MIN_SIZE_TEST": 64, "INPUT.MAX_SIZE_TEST": 64}


def test_measure_latency_is_sane_respects_detections_and_restores_threads(tiny_cfg):
    before = torch.get_num_threads()
    r = measure_latency(tiny_cfg(), detections=5, threads=1, warmup=1, runs=3)
    assert torch.get_num_threads() == before
    assert (r.engine, r.threads, r.runs, r.input_size, r.detections) == ("torch", 1, 3, (64, 64), 5)
    assert 0 < r.min_ms <= r.median_ms <= r.p90_ms < 10_000
    wide, few = measure_latencies([tiny_cfg(), tiny_cfg()], input_size=(48, 80), detections=2, warmup=0, runs=2)
    assert (wide.input_size, wide.detections, few.detections) == ((48, 80), 2, 2)


def test_measure_latency_refuses_bad_arguments(tiny_cfg):
    with pytest.raises(UserError, match="unknown engine 'tvm'"):
        measure_latency(tiny_cfg(), engine="tvm")
    with pytest.raises(UserError, match="detections >= 1"):
        measure_latency(tiny_cfg(), detections=0)


def test_model_latency_cli_json(capsys):
    assert main(["model", "latency", "FBNetV3_A_dsmask", "--input-size", "64", "64", "--detections", "3",
                 "--runs", "2", "--warmup", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["input_size"] == [64, 64] and out["detections"] == 3 and out["median_ms"] > 0


def _space():
    """The quick space as the tiny search binds it, and its trials' configs (as the driver pins)."""
    base = load_config("search_shapes")
    space = load_space("fbnetv3is_quick").bind(base, PINNED)

    def config_of(candidate):
        cfg = space.to_config(candidate, base=base)
        for key, value in PINNED.items():
            set_key(cfg, key, value, "test")
        return cfg

    return space, config_of


def test_latency_predictor_fits_predicts_and_caches_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("NARS_CACHE", str(tmp_path))
    space, config_of = _space()
    model, info = fit_space_latency(space, config_of, samples=6, runs=2, threads=1)
    assert (info["measured"], info["cached"]) == (6, 0)
    path = tmp_path / "latency" / info["path"].rsplit("/", 1)[1]
    stored = json.loads(path.read_text())
    assert stored["key"] == cache_key(space, 1) and len(stored["measurements"]) == 6
    assert stored["key"]["cpu"] and stored["key"]["torch"] == torch.__version__
    candidates = [s.candidate for s in sample(space, 5, seed=9)]
    predicted = space.with_latency(model).latencies(candidates)
    assert predicted.shape == (5,) and (predicted > 0).all()
    measured = [m["median_ms"] for m in stored["measurements"]]
    assert 0.2 * min(measured) < np.median(predicted) < 5 * max(measured)  # the measurements' scale
    # a second run reuses the six and measures two new ones; another thread count is another machine key
    _, again = fit_space_latency(space, config_of, samples=2, runs=2, threads=1)
    assert (again["measured"], again["cached"], again["path"]) == (2, 6, info["path"])
    assert len(json.loads(path.read_text())["measurements"]) == 8
    _, other = fit_space_latency(space, config_of, samples=2, runs=1, threads=2)
    assert other["path"] != info["path"] and other["cached"] == 0


def test_sampling_under_a_latency_limit(tmp_path, monkeypatch):
    monkeypatch.setenv("NARS_CACHE", str(tmp_path))
    space, config_of = _space()
    with pytest.raises(UserError, match="max_latency_ms needs a latency model"):
        sample(space, 2, max_latency_ms=10.0)
    model, _ = fit_space_latency(space, config_of, samples=5, runs=1, threads=1)
    timed = space.with_latency(model)
    free = sample(timed, 40, seed=1)
    assert free[0].latency_ms is None  # predicted only under a limit
    limit = float(np.median(timed.latencies([s.candidate for s in free])))
    kept = sample(timed, 10, seed=1, max_latency_ms=limit)
    assert len(kept) == 10 and all(s.latency_ms <= limit for s in kept)
    assert "latency_ms" in kept[0].to_dict()
    with pytest.raises(UserError, match=r"predicted latency <= 0.001 ms .* ms predicted\)"):
        sample(timed, 2, max_latency_ms=0.001)


def test_features_count_gn_rois_and_every_block_the_model_runs():
    from nars.deploy.latency import block_latencies

    base = load_config("search_shapes")
    bn, blocks = config_features(base)
    gn = config_features(load_config("search_shapes", ["MODEL.FBNET_V2.NORM", "GN"]))[0]
    more, more_blocks = config_features(load_config("search_shapes", ["MODEL.RPN.POST_NMS_TOPK_TEST", "60"]))
    names, batch = list(FEATURES), BLOCK_FEATURES.index("batch")
    assert bn[names.index("gn_mact")] == 0 < gn[names.index("gn_mact")]
    assert more[names.index("rois")] == 2 * bn[names.index("rois")]
    assert more[names.index("box_mmacs")] == pytest.approx(2 * bn[names.index("box_mmacs")])
    assert blocks.shape[1] == len(BLOCK_FEATURES) and len(block_latencies(base, runs=1)) == len(blocks)
    assert sorted(set(more_blocks[:, batch])) == [1, 10, 60]  # image, mask RoIs (detections), box RoIs


def test_onnxruntime_engines_time_the_deployed_graph_and_its_blocks(tiny_cfg):
    """The int8 engine times the quantized graph; each block's time comes from onnxruntime's
    profile, by the node names the exporter gives the block's module (a wrong mapping finds
    no node and raises); the cache keeps each engine's measurements apart."""
    from nars.deploy.latency import block_latencies, onnx_scope

    assert onnx_scope("roi_heads.mask_head.feature_extractor.0.fbnetv2_0_4") == \
        "/roi_heads/mask_head/feature_extractor/feature_extractor.0/fbnetv2_0_4/"
    fp32 = measure_latencies([tiny_cfg(), tiny_cfg()], detections=2, threads=1, warmup=0, runs=1, engine="onnxruntime")
    int8 = measure_latency(tiny_cfg(), detections=2, threads=1, warmup=0, runs=1, engine="onnxruntime-int8")
    assert fp32[0].detections == int8.detections == 2 and int8.engine == "onnxruntime-int8"
    cfg = load_config("search_shapes")
    blocks = config_features(cfg)[1]
    for engine in ("onnxruntime", "onnxruntime-int8"):
        times = block_latencies(cfg, engine=engine, threads=1, runs=1)
        assert len(times) == len(blocks) and all(t > 0 for t in times)
    space, _ = _space()
    assert cache_key(space, 2, "onnxruntime-int8") != cache_key(space, 2) == cache_key(space, 2, "torch")


def test_every_kind_fits_the_same_measurements(tmp_path, monkeypatch):
    monkeypatch.setenv("NARS_CACHE", str(tmp_path))
    space, config_of = _space()
    model, _ = fit_space_latency(space, config_of, samples=6, runs=1, threads=1)
    measurements = json.loads(next((tmp_path / "latency").glob("*.json")).read_text())["measurements"]
    configs = [(config_of(c), None) for c in (m["candidate"] for m in measurements[:3])]
    for kind in KINDS:
        predicted = LatencyPredictor(kind).fit(measurements).predict_configs(configs)
        assert predicted.shape == (3,) and (predicted > 0).all()
    assert model.kind == "blocks"


def test_the_blocks_overhead_stays_within_what_was_measured():
    """Four models whose overhead (latency minus their blocks' times) rises steeply with their
    RoIs, as a loaded machine can measure them: the overhead's line, extrapolated to few RoIs,
    goes far below zero. The predictor keeps it within the measured overheads, so no model is
    predicted to cost nothing (a stage-2 front once held a candidate at 0 ms)."""
    blocks = np.ones((3, len(BLOCK_FEATURES)))
    measurements = []
    for rois, overhead in [(40, 5.0), (45, 6.0), (50, 20.0), (50, 21.0)]:
        row = np.zeros(len(FEATURES))
        row[FEATURES.index("rois")], row[FEATURES.index("mask_rois")] = rois, rois / 5
        measurements.append({"median_ms": 3.0 + overhead, "features": row.tolist(),
                             "block_features": blocks.tolist(), "block_ms": [1.0, 1.0, 1.0]})
    predictor = LatencyPredictor("blocks").fit(measurements)
    few = np.zeros((1, len(FEATURES)))
    few[0, FEATURES.index("rois")], few[0, FEATURES.index("mask_rois")] = 10, 2
    line = predictor.overhead.predict(few[:, [FEATURES.index(f) for f in OVERHEAD]])
    assert line[0] < -3.0  # what the fit alone says: the blocks' 3 ms and more taken away
    got = predictor.predict_features(few, [blocks])[0]
    assert 3.0 + 5.0 - 1e-9 <= got <= 3.0 + 21.0 + 1e-9  # the blocks (1 ms each) and a measured overhead
