"""The accuracy predictor: proxy pretraining helps, ranking quality on a synthetic task,
uncertainty, scikit-learn baselines, k-fold evaluation, save/load, tables and the CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
import torch

from nars.cli import main
from nars.errors import UserError
from predictor import (
    KINDS, MLPPredictor, SklearnPredictor, cross_validate, out_of_fold, pretrain_encoder, proxy_data, rank_metrics,
    read_table,
)
from search_spaces import load_space, sample

TEST = slice(200, 600)  # held-out candidates; training sets are drawn from rows 0-199


@pytest.fixture(scope="module")
def space():
    return load_space("fbnetv3is_quick")


@pytest.fixture(scope="module")
def encoder(space):
    return pretrain_encoder(*proxy_data(space, 2048, seed=1), seed=0)


@pytest.fixture(scope="module")
def task(space):
    """600 candidates and a target that is a smooth function of their encoding, correlated
    with FLOPs: z(log MFLOPs) + 0.5 z(log params) + 0.5 sin(1.5 x.w), w ~ N(0, I/dims)."""
    samples = sample(space, 600, method="uniform", seed=7)
    x = space.encode([s.candidate for s in samples])
    z = lambda v: (v - v.mean()) / v.std()  # noqa: E731
    w = np.random.default_rng(0).normal(size=x.shape[1]) / np.sqrt(x.shape[1])
    y = z(np.log([s.mflops for s in samples])) + 0.5 * z(np.log([s.params for s in samples])) + 0.5 * np.sin(1.5 * x @ w)
    return samples, x, y


def _tau(model, x, y, n: int, split: int) -> float:
    train = slice(split * n, split * n + n)
    return rank_metrics(y[TEST], model.fit(x[train], y[train]).predict(x[TEST]))["tau"]


def test_pretrained_encoder_embeds_the_proxies(space, encoder):
    """A linear probe on the embedding predicts log MFLOPs and log params of unseen candidates."""
    x, proxies = proxy_data(space, 1000, seed=9)
    recipe = np.zeros((len(x), space.encoding_length - space.arch_slice.stop))
    f = np.hstack([encoder.transform(np.hstack([x, recipe]))[:, : encoder.embed], np.ones((len(x), 1))])
    coef, *_ = np.linalg.lstsq(f[:500], proxies[:500], rcond=None)
    r2 = 1 - (proxies[500:] - f[500:] @ coef).var(0) / proxies[500:].var(0)
    assert r2.min() > 0.93, r2  # measured 0.985 (MFLOPs) and 0.956 (params) from 2,048 pretraining samples


def test_predictor_ranks_held_out_candidates_from_64_points(space, encoder, task):
    _, x, y = task
    tau = _tau(MLPPredictor(space.arch_slice.stop, encoder=encoder), x, y, 64, 0)
    assert tau >= 0.8, tau  # measured 0.855 (0.859 and 0.833 on the next two splits)


@pytest.mark.parametrize("n", [16, 32])
def test_pretraining_raises_tau_with_few_points(space, encoder, task, n):
    _, x, y = task
    arch = space.arch_slice.stop
    pre = np.mean([_tau(MLPPredictor(arch, encoder=encoder, seed=s), x, y, n, s) for s in range(2)])
    scratch = np.mean([_tau(MLPPredictor(arch, seed=s), x, y, n, s) for s in range(2)])
    assert pre >= scratch + 0.3, (pre, scratch)  # measured 0.79 vs 0.11 (16), 0.82 vs 0.21 (32)
    assert pre >= 0.7


def test_uncertainty_and_baselines_share_the_interface(space, encoder, task):
    _, x, y = task
    y2 = np.column_stack([y, -y])
    mean, std = MLPPredictor(space.arch_slice.stop, encoder=encoder, members=3, steps=100).fit(x[:48], y2[:48]).predict(
        x[TEST], return_std=True)
    assert mean.shape == std.shape == (400, 2) and (std >= 0).all() and std.mean() > 0
    for kind in KINDS:
        for enc in (None, encoder):
            model = SklearnPredictor(kind, encoder=enc).fit(x[:48], y2[:48])
            assert model.predict(x[TEST]).shape == (400, 2)
            assert model.fit(x[:48], y[:48]).predict(x[TEST]).shape == (400, 1)
            if kind == "gbm":
                with pytest.raises(ValueError, match="no uncertainty"):
                    model.predict(x[TEST], return_std=True)
            else:
                mean, std = model.predict(x[TEST], return_std=True)
                assert mean.shape == std.shape == (400, 1) and std.mean() > 0


def test_constant_targets_predict_the_constant(space, encoder, task):
    """Every stage-1 AP 0 teaches nothing: the predictor must not invent APs elsewhere."""
    _, x, _ = task
    model = MLPPredictor(space.arch_slice.stop, encoder=encoder, members=2, steps=100).fit(x[:4], np.zeros(4))
    assert np.abs(model.predict(x[TEST])).max() < 1e-6


class _Mean:
    name = "mean"

    def fit(self, x, y):
        self.mean = y.mean(0)
        return self

    def predict(self, x, return_std=False):
        return np.tile(self.mean, (len(x), 1))


def test_rank_metrics_and_k_fold():
    y = np.arange(10.0)
    assert rank_metrics(y, 2 * y + 1) == pytest.approx({"tau": 1.0, "rho": 1.0, "mae": np.mean(y + 1)})
    assert rank_metrics(y, -y)["tau"] == pytest.approx(-1.0)
    x, y2 = np.zeros((10, 1)), np.column_stack([y, y**2])
    pred = out_of_fold(_Mean, x, y2, folds=5, seed=0)
    for row in range(10):  # each row is predicted by the mean of the other folds' rows only
        others = [r for r in range(10) if not np.array_equal(pred[r], pred[row])]
        assert np.allclose(pred[row], y2[others].mean(0))
    scores = cross_validate(_Mean, x, y2, ["a", "b"], folds=5)
    assert set(scores) == {"a", "b"} and set(scores["a"]) == {"tau", "rho", "mae"}
    with pytest.raises(UserError, match="folds"):
        out_of_fold(_Mean, x, y2, folds=11)


def test_save_and_load(tmp_path, space, encoder, task):
    _, x, y = task
    rng_state = torch.random.get_rng_state()
    model = MLPPredictor(space.arch_slice.stop, encoder=encoder, members=2, steps=50).fit(x[:32], y[:32])
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # seeds apply locally
    path = tmp_path / "predictor.pt"
    model.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["predictor.pt"]  # no temporary file left behind
    assert torch.load(path, weights_only=True)["format"] == "nars-predictor/1"
    loaded = MLPPredictor.load(path)
    assert np.array_equal(loaded.predict(x[TEST]), model.predict(x[TEST]))
    # the pretrained encoder travels along: refitting gives the same model again
    assert np.array_equal(loaded.fit(x[32:64], y[32:64]).predict(x[TEST]), model.fit(x[32:64], y[32:64]).predict(x[TEST]))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pt: not a readable NARS predictor file") as error:
        MLPPredictor.load(tmp_path / "junk.pt")
    assert "\n" not in str(error.value)
    torch.save({"format": argparse.Namespace()}, tmp_path / "unsafe.pt")  # code torch's safe loader refuses
    with pytest.raises(UserError, match="unsafe.pt: not a readable NARS predictor file") as error:
        MLPPredictor.load(tmp_path / "unsafe.pt")
    assert "weights_only" not in str(error.value) and "\n" not in str(error.value)
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="other.pt: not a NARS predictor file"):
        MLPPredictor.load(tmp_path / "other.pt")


def _table(task, rows: int) -> pd.DataFrame:
    samples, _, y = task
    return pd.DataFrame({"candidate": [json.dumps(s.candidate) for s in samples[:rows]],
                         "segm_AP": y[:rows], "bbox_AP": y[:rows] + 0.1 * np.sin(np.arange(rows))})


def test_tables_csv_parquet_and_columns(tmp_path, space, task):
    samples, _, y = task
    frame = _table(task, 20)
    frame.loc[3, "bbox_AP"] = np.nan  # a failed trial: left out
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    wide = pd.DataFrame([s.candidate for s in samples[:20]]).assign(segm_AP=y[:20], bbox_AP=y[:20])
    wide.loc[3, "bbox_AP"] = np.nan
    wide.to_csv(tmp_path / "wide.csv", index=False)  # lists as JSON text, blanks for inactive parameters
    expected = [s.candidate for i, s in enumerate(samples[:20]) if i != 3]
    for name in ("t.csv", "t.parquet", "wide.csv"):
        candidates, metrics = read_table(tmp_path / name, space)
        assert candidates == expected and metrics.shape == (19, 2)
    with pytest.raises(UserError, match="t.csv: no column val_AP"):
        read_table(tmp_path / "t.csv", space, ["val_AP"])
    frame.loc[0, "candidate"] = json.dumps({**samples[0].candidate, "t1.c": 99})
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(UserError, match="bad.csv: row 0: parameter t1.c: value 99"):
        read_table(tmp_path / "bad.csv", space)


def test_cli_eval(tmp_path, capsys, task):
    _table(task, 40).to_csv(tmp_path / "runs.csv", index=False)
    args = ["predictor", "eval", str(tmp_path / "runs.csv"), "--models", "mlp,rf", "--folds", "3", "--pretrain-samples", "512"]
    assert main(args + ["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["model"], r["pretrained"], r["metric"]) for r in rows} == {
        (m, p, k) for m in ("mlp", "rf") for p in (False, True) for k in ("segm_AP", "bbox_AP")}
    assert all(-1 <= r["tau"] <= 1 and -1 <= r["rho"] <= 1 and r["mae"] >= 0 for r in rows)
    for bad, message in [(["predictor", "eval", str(tmp_path / "none.csv")], "none.csv: cannot read"),
                         (["predictor", "eval", str(tmp_path / "runs.txt")], "expected a .csv or .parquet"),
                         (args + ["--models", "svm"], "unknown predictor 'svm'")]:
        assert main(bad) == 2
        assert message in capsys.readouterr().err
