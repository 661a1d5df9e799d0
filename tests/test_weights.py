"""MODEL.WEIGHTS: d2go/fvcore checkpoints (key names and shapes from d2go) and NARS's own."""

import re
from pathlib import Path

import pytest
import torch

from nars.cli import main
from nars.config import load_config
from nars.errors import UserError
from nars.model.fbnetv3is import build_model
from nars.model.weights import NAMED_CHECKPOINTS, WEIGHTS_DIR_ENV, load_weights

DATA = Path(__file__).parent / "data"
KEY_LISTS = {"FBNetV3_A": "d2go_FBNetV3_A_C4_keys.txt", "FBNetV3_A_dsmask": "d2go_FBNetV3_A_dsmask_C4_keys.txt"}


def d2go_state_dict(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with exactly d2go's key names and shapes."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for line in (DATA / KEY_LISTS[arch]).read_text().splitlines():
        m = re.match(r"^(\S+) \(([\d, ]*)\)$", line.strip())
        if m:
            shape = tuple(int(x) for x in m.group(2).split(",") if x.strip())
            state[m.group(1)] = (
                torch.tensor(7) if m.group(1).endswith("num_batches_tracked") else torch.rand(shape, generator=g) + 0.5
            )
    return state


def _model(arch: str, *extra: str):
    return build_model(load_config(None, ["MODEL.FBNET_V2.ARCH", arch, *extra]))


@pytest.mark.parametrize("arch", KEY_LISTS)
def test_d2go_checkpoint_loads_with_no_missing_or_unexpected_keys(tmp_path, arch):
    state = d2go_state_dict(arch)
    path = tmp_path / "model_final.pth"
    torch.save({"model": state, "iteration": 540000, "optimizer": {}, "scheduler": {"last_epoch": 3}}, path)
    model = _model(arch)
    report = load_weights(model, str(path), use_ema=False)
    assert (report.missing, report.unexpected, report.mismatched, report.reinitialized) == ([], [], [], [])
    assert report.loaded == len(state)
    own = model.state_dict()
    key = "proposal_generator.rpn_head.rpn_regressor.cls_logits.weight"
    assert torch.equal(own["rpn.head.rpn_regressor.cls_logits.weight"], state[key])
    assert torch.equal(own["roi_heads.mask_head.predictor.mask_fcn_logits.bias"], state["roi_heads.mask_head.predictor.mask_fcn_logits.bias"])


def test_bare_state_dict_ema_and_frozen_stages(tmp_path):
    state = d2go_state_dict("FBNetV3_A_dsmask")
    ema = {k: v + 1 for k, v in state.items()}
    torch.save({"model": state, "ema_state": ema}, tmp_path / "ema.pth")
    key = "roi_heads.box_head.roi_box_conv.0.fbnetv2_0_0.pw.conv.weight"
    model = _model("FBNetV3_A_dsmask", "MODEL.BACKBONE.FREEZE_AT", "2")
    report = load_weights(model, str(tmp_path / "ema.pth"), use_ema=True)
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert torch.equal(model.state_dict()[key], ema[key])
    frozen_mean = "backbone.body.trunk0.fbnetv2_0_0.bn.running_mean"
    assert torch.equal(model.state_dict()[frozen_mean], ema[frozen_mean])  # frozen BN keeps loaded statistics
    torch.save(state, tmp_path / "bare.pth")
    model = _model("FBNetV3_A_dsmask")
    load_weights(model, str(tmp_path / "bare.pth"))
    assert torch.equal(model.state_dict()[key], state[key])


def test_other_class_count_reinitialises_predictors_with_a_warning(tmp_path):
    torch.save({"model": d2go_state_dict("FBNetV3_A_dsmask")}, tmp_path / "coco.pth")
    model = _model("FBNetV3_A_dsmask", "MODEL.ROI_HEADS.NUM_CLASSES", "5")
    with pytest.warns(UserWarning, match="checkpoint has 80 classes, the model 5"):
        report = load_weights(model, str(tmp_path / "coco.pth"))
    assert sorted(report.reinitialized) == [
        "roi_heads.box_predictor.bbox_pred.bias", "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.box_predictor.cls_score.bias", "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.mask_head.predictor.mask_fcn_logits.bias", "roi_heads.mask_head.predictor.mask_fcn_logits.weight",
    ]
    assert report.mismatched == [] and report.missing == []


def test_checkpoint_of_another_architecture_lists_mismatches(tmp_path):
    torch.save({"model": d2go_state_dict("FBNetV3_A")}, tmp_path / "a.pth")
    report = load_weights(_model("FBNetV3_A_dsmask"), str(tmp_path / "a.pth"))
    assert any(m.startswith("backbone.body.trunk1.fbnetv2_1_0.pwl.conv.weight: checkpoint (24, 64, 1, 1) vs model (32, 64, 1, 1)")
               for m in report.mismatched)
    assert "backbone.body.trunk2.fbnetv2_2_0.se.se.1.bias" in report.unexpected
    assert report.reinitialized == []  # same 80 classes: the predictor mismatch is reported, not hidden


def test_named_checkpoint_resolves_to_user_supplied_file(tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    with pytest.raises(UserError, match=r"mask_rcnn_fbnetv3a_dsmask_C4\.pth is missing; fetch d2go's checkpoint with "
                                         r"`nars weights download 'FBNetV3a-DSMask-C4 COCO'`.*NARS_WEIGHTS_DIR"):
        load_weights(_model("FBNetV3_A_dsmask"), "fbnetv3a-dsmask-c4 COCO")
    torch.save({"model": d2go_state_dict("FBNetV3_A_dsmask")}, tmp_path / NAMED_CHECKPOINTS["fbnetv3a-dsmask-c4 coco"].filename)
    report = load_weights(_model("FBNetV3_A_dsmask"), "FBNetV3a-DSMask-C4 COCO")
    assert report.loaded == 362 and not report.missing
    with pytest.raises(UserError, match="is for MODEL.FBNET_V2.ARCH FBNetV3_A_dsmask, the config has FBNetV3_A"):
        load_weights(_model("FBNetV3_A"), "FBNetV3a-DSMask-C4 COCO")


def test_bad_checkpoint_files(tmp_path):
    model = _model("FBNetV3_A_dsmask")
    with pytest.raises(UserError, match="does not exist"):
        load_weights(model, str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"junk\.pth: not a readable PyTorch checkpoint"):
        load_weights(model, str(tmp_path / "junk.pth"))
    torch.save({"model": {"a": 1}}, tmp_path / "empty.pth")
    with pytest.raises(UserError, match="no tensors found"):
        load_weights(model, str(tmp_path / "empty.pth"))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": Evil()}, tmp_path / "evil.pth")  # weights_only=True refuses arbitrary objects
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        load_weights(model, str(tmp_path / "evil.pth"))


def test_model_info_reports_the_load(tmp_path, capsys):
    import json

    torch.save({"model": d2go_state_dict("FBNetV3_A_dsmask")}, tmp_path / "m.pth")
    assert main(["model", "info", "FBNetV3_A_dsmask", "--weights", str(tmp_path / "m.pth"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["weights"] == {"loaded": 362, "missing": [], "unexpected": [], "mismatched": [], "reinitialized": []}
