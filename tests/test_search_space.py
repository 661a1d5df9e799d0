"""Search spaces: the format and its errors, references as members, candidate <-> config <->
vector round trips, ids, and constrained sampling."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from nars.cli import main
from nars.config import load_config, set_key
from nars.errors import UserError
from nars.model.arch import REFERENCE_ARCHS, parse_arch
from search_spaces import load_space, sample

D2GO_PARAMS = {"FBNetV3_A": 6_118_628, "FBNetV3_A_dsmask": 2_555_932}  # reference file, section 2

MINI = """
name: mini
arch:
  trunk:
    - [{op: conv, k: 3, c: 16, s: 2}]
    - [{k: $k, c: 24, s: 2}]
    - [{k: 3, c: 32, s: 2}]
    - [{k: 3, c: 64, s: 2}]
  rpn: [[{k: 3, c: 64}]]
  box_head: [[{k: 3, c: 64, s: 2}]]
  mask_head: [[{k: 3, c: 32, s: -2}]]
config:
  SOLVER.OPTIMIZER: $opt
  SOLVER.MOMENTUM: $mom
  MODEL_EMA.ENABLED: $ema
parameters:
  k: {type: choice, values: [3, 5]}
  opt: {type: choice, values: [sgd, adamw]}
  mom: {type: int, low: 1, high: 3, when: {opt: sgd}}
  ema: {type: fixed, value: false}
"""


@pytest.fixture(scope="module")
def coco():
    return load_space("fbnetv3is")


@pytest.fixture(scope="module")
def quick():
    return load_space("fbnetv3is_quick")


def _write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ----- references -----


@pytest.mark.parametrize("name", sorted(REFERENCE_ARCHS))
def test_references_are_members_of_the_coco_space(coco, name):
    candidate = coco.references[name]
    assert coco.to_arch(candidate).to_data() == parse_arch(REFERENCE_ARCHS[name]).to_data()
    assert coco.cost(candidate)[1] == D2GO_PARAMS[name]
    cfg = coco.to_config(candidate)  # the same reference as a complete config naming its arch
    set_key(cfg, "MODEL.FBNET_V2.ARCH", name, "test")
    assert coco.from_config(cfg) == candidate


def test_quick_space_holds_dsmask_and_is_smaller(coco, quick):
    candidate = quick.references["FBNetV3_A_dsmask"]
    assert quick.to_arch(candidate).to_data() == parse_arch(REFERENCE_ARCHS["FBNetV3_A_dsmask"]).to_data()
    assert quick.log10_size() < coco.log10_size()
    with pytest.raises(UserError, match="parameter t1.n: value 3 is not in int"):
        quick.from_config({**quick.to_overrides(candidate), "MODEL.FBNET_V2.ARCH": "FBNetV3_A"})
    with pytest.raises(UserError, match="INPUT.MIN_SIZE_TEST is 224; the space fixes it at 128"):
        quick.from_config(coco.to_overrides(coco.references["FBNetV3_A_dsmask"]))


def test_reference_id_is_stable(coco):
    # The id hashes the canonical candidate: a change here changes every stored id.
    # 765a2c2a04d5 before the space searched flip, crop and drop_connect.
    assert coco.candidate_id(coco.references["FBNetV3_A_dsmask"]) == "d550ed43659f"


# ----- round trips -----


def test_candidate_config_round_trip(quick):
    for s in sample(quick, 200, seed=1, method="uniform"):
        overrides = quick.to_overrides(s.candidate)
        assert quick.from_config(overrides) == s.candidate
        assert quick.candidate_id(quick.from_config(overrides)) == s.id


def test_complete_config_round_trip(quick):
    """to_config gives a complete nars config (keys and types checked against DEFAULTS) that maps back."""
    for s in sample(quick, 50, seed=2):
        cfg = quick.to_config(s.candidate)
        assert cfg["SOLVER"]["BASE_LR"] == s.candidate["lr"] and cfg["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 4
        assert quick.from_config(cfg) == s.candidate
    base = load_config("search_shapes")  # the shipped search config is the quick space's reference
    assert quick.from_config(base) == quick.references["FBNetV3_A_dsmask"]
    cfg = quick.to_config(s.candidate, base)
    assert cfg["DATASETS"] == base["DATASETS"] and quick.from_config(cfg) == s.candidate


def test_vector_round_trip_and_separable_parts(coco):
    candidates = [s.candidate for s in sample(coco, 300, seed=3)]
    x = coco.encode(candidates)
    assert x.shape == (300, coco.encoding_length) and x.min() >= 0 and x.max() <= 1
    assert coco.decode(x) == candidates
    assert np.array_equal(coco.encode(coco.decode(x)), x)
    assert coco.arch_slice.stop == coco.recipe_slice.start and coco.recipe_slice.stop == coco.encoding_length
    a, b = candidates[0], candidates[1]
    mixed = {**{k: a[k] for k in a if k in coco.arch_names}, **{k: b[k] for k in b if k not in coco.arch_names}}
    xm = coco.encode([mixed])[0]
    assert np.array_equal(xm[coco.arch_slice], x[0, coco.arch_slice])
    assert np.array_equal(xm[coco.recipe_slice], x[1, coco.recipe_slice])
    assert coco.cost(mixed) == coco.cost(a)  # costs depend on the arch part only


def test_conditions_and_canonical_form(tmp_path):
    space = load_space(_write(tmp_path, MINI))
    assert math.isclose(space.log10_size(), math.log10((3 + 1) * 2))  # (sgd: 3 momenta, adamw: 1) x 2 kernels
    everything = space.decode(np.eye(space.encoding_length))  # includes snapping of non one-hot rows
    assert all(space.canonical(c) == c for c in everything)
    sgd = {"k": 5, "opt": "sgd", "mom": 2.0, "ema": False}
    assert space.canonical(sgd)["mom"] == 2 and space.candidate_id(sgd) == space.candidate_id({**sgd, "mom": 2})
    assert "SOLVER.MOMENTUM" not in space.to_overrides({"k": 3, "opt": "adamw", "ema": False})
    adamw = {"SOLVER.OPTIMIZER": "adamw", "SOLVER.MOMENTUM": 99, "MODEL_EMA.ENABLED": False,
             "MODEL.FBNET_V2.ARCH": space.to_arch(sgd).to_data()}
    assert space.from_config(adamw) == {"k": 5, "opt": "adamw", "ema": False}  # inactive momentum ignored
    with pytest.raises(UserError, match="parameter ema: value True differs from the fixed False"):
        space.from_config({k: v for k, v in adamw.items() if k != "MODEL_EMA.ENABLED"})  # the default is true
    for bad, message in [
        ({**sgd, "lr": 0.1}, "unknown parameter 'lr'"),
        ({"k": 5, "opt": "sgd", "ema": False}, "missing parameter mom"),
        ({"k": 5, "opt": "adamw", "mom": 2, "ema": False}, "parameter mom is inactive"),
        ({**sgd, "mom": 4}, "parameter mom: value 4 is not in int"),
        ({**sgd, "k": 4}, "parameter k: value 4 is not one of"),
        ({**sgd, "ema": True}, "parameter ema: value True differs from the fixed False"),
        ({**sgd, "k": True}, "parameter k: value True is not one of"),
    ]:
        with pytest.raises(UserError, match=message):
            space.canonical(bad)


def test_float_round_trip_is_exact(coco):
    rng = np.random.default_rng(0)
    for s in sample(coco, 100, seed=4, method="uniform"):
        jitter = {k: v * (1 + 1e-12 * rng.standard_normal()) if isinstance(v, float) else v
                  for k, v in s.candidate.items()}
        assert coco.canonical(jitter) == s.candidate
        assert coco.decode(coco.encode([jitter])) == [s.candidate]


# ----- sampling -----


@pytest.mark.parametrize("method", ["sobol", "uniform"])
def test_sampling_is_deterministic_distinct_and_constrained(quick, method):
    def ids(n: int, seed: int) -> list[str]:
        return [s.id for s in sample(quick, n, method=method, seed=seed, max_mflops=600, max_params=1.5e6)]

    first = sample(quick, 300, method=method, seed=5, max_mflops=600, max_params=1.5e6)
    assert ids(300, 5) == [s.id for s in first]
    assert ids(100, 5) == [s.id for s in first[:100]]  # a smaller n is a prefix
    assert ids(300, 6) != [s.id for s in first]
    assert len({s.id for s in first}) == 300
    assert all(s.mflops <= 600 and s.params <= 1.5e6 for s in first)
    assert all(quick.cost(s.candidate) == (s.mflops, s.params) for s in first[:20])
    unconstrained = sample(quick, 300, method=method, seed=5)
    assert max(s.mflops for s in unconstrained) > 600  # the limit did bind


def test_infeasible_constraint_is_a_quick_clear_error(quick):
    """Quick as in bounded work: both give up after 16 batches of draws (the count in the
    message), whatever the machine and its load (a time limit would depend on them)."""
    with pytest.raises(UserError, match=r"none of 16,384 drawn candidates meet MFLOPs <= 1 .*smallest drawn: \d"):
        sample(quick, 10, max_mflops=1)
    with pytest.raises(UserError, match=r"only \d+ of 16,384 drawn candidates meet MFLOPs <= 120 .* fewer than 100000"):
        sample(quick, 100_000, max_mflops=120)


# ----- CLI -----


def test_cli_info_and_sample(capsys):
    assert main(["space", "info", "fbnetv3is", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["encoding"]["length"] == info["encoding"]["recipe"][1] and info["log10_size"] > 20
    assert {r["name"]: r["params"] for r in info["references"]} == D2GO_PARAMS
    assert main(["space", "sample", "fbnetv3is_quick", "--n", "7", "--max-mflops", "400", "--seed", "3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 7 and all(r["mflops"] <= 400 and {"id", "params", "candidate"} <= r.keys() for r in rows)
    assert main(["space", "info", "fbnetv3is_quick"]) == 0
    assert "reference FBNetV3_A_dsmask" in capsys.readouterr().out
    assert main(["space", "sample", "fbnetv3is_quick", "--n", "3", "--max-params", "10"]) == 2
    assert "none of" in capsys.readouterr().err
    assert main(["space", "info", "no_such_space"]) == 2
    assert "shipped: fbnetv3is, fbnetv3is_finetune, fbnetv3is_quick" in capsys.readouterr().err


BAD_SPACES = [
    ("parameters:\n  lr: {type: loguniform, low: 0.1, high: 1}", "parameter lr: unknown type 'loguniform'"),
    ("parameters:\n  norm: {type: choice, values: []}", "parameter norm: choice needs a non-empty list"),
    ("parameters:\n  t1.c: {type: int, low: 32, high: 16, step: 8}", "parameter t1.c: low 32 > high 16"),
    ("parameters:\n  lr: {type: float, low: 0.5, high: 0.1}", "parameter lr: low 0.5 > high 0.1"),
    ("config:\n  SOLVER.BASE_LR: $learning_rate", "config SOLVER.BASE_LR: unknown parameter 'learning_rate'"),
    ("parameters:\n  momentum: {type: float, low: 0.8, high: 0.99, when: {optimiser: [sgd]}}",
     "parameter momentum: when: 'optimiser' must be a choice parameter"),
    ("parameters:\n  t1.c: {type: int, low: 16, high: 32, stpe: 8}", r"parameter t1.c: unknown field\(s\) \['stpe'\]"),
    ("parameters:\n  t1.c: {type: int, low: 16, high: 30, step: 8}", "parameter t1.c: step must be a positive integer"),
    ("parameters:\n  t1.k: {type: choice, values: [3, 4]}", r"parameter t1.k = 4 makes an invalid arch"),
    ("parameters:\n  unused: {type: choice, values: [1, 2]}", "parameter unused is not used"),
    ("parameters:\n  lr: {type: float, low: 0, high: 1, log: true}", "parameter lr: a log range needs low > 0"),
    ("config:\n  MODEL.RPN.IOU_THRESHOLD: [0.3, 0.7]", "unknown config key MODEL.RPN.IOU_THRESHOLD"),
    ("foo: 1", r"unknown key\(s\) \['foo'\]"),
]


@pytest.mark.parametrize("text, message", BAD_SPACES)
def test_bad_space_files_name_the_file_and_parameter(tmp_path, capsys, text, message):
    path = _write(tmp_path, "extends: fbnetv3is_quick\n" + text)
    assert main(["space", "info", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err), err


def test_bad_arch_template_and_references(tmp_path, capsys):
    cases = [
        (MINI.replace("{k: $k, c: 24, s: 2}", "{k: $k, c: 24, s: $k}"), "s \\(stride\\) a literal"),
        (MINI.replace("- [{k: 3, c: 64, s: 2}]\n  rpn", "- [{k: 3, c: 64, s: 1}]\n  rpn"), "trunk output stride is 8"),
        (MINI + "references:\n  big: {MODEL.FBNET_V2.ARCH: FBNetV3_A}", "reference big: arch trunk has"),
        ("extends: cycle.yaml\n", "makes a cycle"),
        (MINI + "references:\n  r: no_such_config", "reference r: config no_such_config: no such file"),
    ]
    for text, message in cases:
        path = _write(tmp_path, text, "cycle.yaml")
        assert main(["space", "info", str(path)]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and re.search(message, err), err
