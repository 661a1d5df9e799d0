"""Config loading and the `nars model info` command: clear one-line errors, exit code 2."""

import json
import subprocess
import sys

import pytest
import yaml

from nars.cli import main
from nars.config import dump, load_config
from nars.errors import UserError
from nars.model.arch import REFERENCE_ARCHS


def test_defaults_are_d2go_values():
    cfg = load_config()
    assert cfg["MODEL"]["ROI_BOX_HEAD"]["POOLER_RESOLUTION"] == 6
    assert cfg["MODEL"]["ROI_MASK_HEAD"]["POOLER_RESOLUTION"] == 14
    rpn = cfg["MODEL"]["RPN"]
    assert (rpn["PRE_NMS_TOPK_TRAIN"], rpn["PRE_NMS_TOPK_TEST"], rpn["POST_NMS_TOPK_TRAIN"], rpn["POST_NMS_TOPK_TEST"]) == (
        2000, 1000, 2000, 30
    )
    assert rpn["IOU_THRESHOLDS"] == [0.3, 0.7] and cfg["MODEL"]["ROI_HEADS"]["IOU_THRESHOLDS"] == [0.5]


def test_overrides_are_parsed_as_yaml_values():
    cfg = load_config(None, ["MODEL.RPN.IOU_THRESHOLDS", "[0.2, 0.8]", "MODEL.ROI_HEADS.NUM_CLASSES", "4",
                             "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "1", "MODEL.FBNET_V2.NORM", "GN"])
    assert cfg["MODEL"]["RPN"]["IOU_THRESHOLDS"] == [0.2, 0.8]
    assert cfg["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 4
    assert cfg["MODEL"]["ROI_HEADS"]["SCORE_THRESH_TEST"] == 1.0 and isinstance(cfg["MODEL"]["ROI_HEADS"]["SCORE_THRESH_TEST"], float)


def test_unknown_key_names_the_closest_valid_one():
    with pytest.raises(UserError, match=r"unknown config key MODEL.ROI_BOX_HEAD.POOLER_RESOLUTON; did you mean MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION\?"):
        load_config(None, ["MODEL.ROI_BOX_HEAD.POOLER_RESOLUTON", "7"])


def test_wrong_type_names_key_and_expected_type():
    with pytest.raises(UserError, match="MODEL.ROI_HEADS.NUM_CLASSES expects int, got str 'many'"):
        load_config(None, ["MODEL.ROI_HEADS.NUM_CLASSES", "many"])
    with pytest.raises(UserError, match="MODEL.BACKBONE.FREEZE_AT expects int, got bool"):
        load_config(None, ["MODEL.BACKBONE.FREEZE_AT", "true"])
    with pytest.raises(UserError, match="KEY VALUE pairs"):
        load_config(None, ["MODEL.WEIGHTS"])


def test_yaml_file_with_inline_arch_and_dump_round_trip(tmp_path):
    arch = REFERENCE_ARCHS["FBNetV3_A_dsmask"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"MODEL": {"FBNET_V2": {"ARCH": arch}, "ROI_HEADS": {"NUM_CLASSES": 80}}}))
    cfg = load_config(path)
    again = tmp_path / "again.yaml"
    again.write_text(dump(cfg))
    assert load_config(again) == cfg


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("arch, total", [("FBNetV3_A_dsmask", 2555932), ("FBNetV3_A", 6118628)])
def test_model_info_json(capsys, arch, total):
    code, out, _ = _cli(capsys, "model", "info", arch, "--num-classes", "80", "--json", "--input-size", "224", "320")
    info = json.loads(out)
    assert code == 0 and info["params"]["total"] == total and info["arch"] == arch
    assert set(info["params"]) == {"trunk", "rpn", "box_head", "box_predictor", "mask_head", "total"}
    assert info["mflops"]["input_size"] == [224, 320] and info["mflops"]["trunk"] > 100


@pytest.mark.parametrize(
    "content, message",
    [
        ("MODEL:\n  RPN:\n    PRE_NMS_TOPK: 5\n", "unknown config key MODEL.RPN.PRE_NMS_TOPK; did you mean"),
        ("MODEL:\n  FBNET_V2:\n    ARCH: {trunk: []}\n", "MODEL.FBNET_V2.ARCH: missing part(s) ['rpn', 'box_head', 'mask_head']"),
        ("MODEL: [1, 2\n", "invalid YAML"),
        ("INPUT:\n  MAX_SIZE_TEST: big\n", "INPUT.MAX_SIZE_TEST expects int"),
    ],
)
def test_bad_config_file_one_line_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    code, out, err = _cli(capsys, "model", "info", str(path))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_console_script_runs_end_to_end():
    result = subprocess.run([sys.executable, "-m", "nars.cli", "model", "info", "FBNetV3_A_dsmask"],
                            capture_output=True, text=True, check=True)
    assert "2,555,932" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "nars.cli", "model", "info", "nope.yaml"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("nars model: error: config nope.yaml")
