"""Typed config: YAML loading, dotted overrides, strict types, validation errors naming key and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from conta.config import Config, CrfConfig, dump_yaml, load_config, replace, to_dict
from conta.errors import ConfigError, ContaError


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(path: Path | None, *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    assert isinstance(info.value, ContaError)  # so the CLI prints it without a traceback
    return str(info.value)


# -- loading -----------------------------------------------------------------------------------


def test_no_file_gives_the_dataclass_defaults() -> None:
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.cam.lr == 0.1 and cfg.seg.crf.bi_xy_std == 67.0
    assert cfg.run_dir == Path("runs") / "demo"


def test_yaml_values_replace_defaults_and_the_rest_stay(tmp_path: Path) -> None:
    path = write(tmp_path, "run:\n  name: exp1\ncam:\n  lr: 0.05\n  scales: [1.0, 0.5]\nseg:\n  crf:\n    iterations: 5\n")
    cfg = load_config(path)
    assert cfg.run.name == "exp1"
    assert cfg.cam.lr == 0.05 and cfg.cam.scales == [1.0, 0.5]
    assert cfg.cam.epochs == Config().cam.epochs
    assert cfg.seg.crf.iterations == 5
    # the other seg CRF values are seg's defaults, not CrfConfig()'s (the IR-label CRF)
    assert cfg.seg.crf.bi_xy_std == 67.0 and cfg.seg.crf.bi_rgb_std == 3.0 and cfg.seg.crf.pos_xy_std == 1.0
    assert cfg.ir_label.crf == CrfConfig()


def test_empty_file_and_empty_section_are_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()
    cfg = load_config(write(tmp_path, "cam:\nseg:\n", "empty_sections.yaml"), ["cam.lr=0.5"])
    assert cfg.cam.lr == 0.5 and cfg.seg == Config().seg


def test_lists_of_sections_are_built_as_dataclasses(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  synth:\n    pairs:\n      - {classes: [dog, person], p: 0.5}\n")
    cfg = load_config(path)
    (pair,) = cfg.data.synth.pairs
    assert pair.classes == ["dog", "person"] and pair.p == 0.5


# -- overrides ---------------------------------------------------------------------------------


def test_dotted_overrides_scalar_nested_and_list(tmp_path: Path) -> None:
    path = write(tmp_path, "cam:\n  lr: 0.05\n")
    cfg = load_config(path, ["cam.lr=0.01", "seg.crf.iterations=5", "cam.scales=[1.0,0.5]", "run.device=cpu"])
    assert cfg.cam.lr == 0.01  # the override wins over the file
    assert cfg.seg.crf.iterations == 5 and cfg.seg.crf.bi_w == 4.0
    assert cfg.cam.scales == [1.0, 0.5]
    assert cfg.run.device == "cpu"


def test_override_types_follow_the_field() -> None:
    cfg = load_config(None, ["cam.lr=5"])
    assert cfg.cam.lr == 5.0 and isinstance(cfg.cam.lr, float)  # an int is fine for a float field
    assert load_config(None, ["cam.lr=1e-3"]).cam.lr == 0.001  # YAML 1.1 reads 1e-3 as a string
    assert load_config(None, ["seg.weight_decay=5E-4"]).seg.weight_decay == 0.0005
    assert load_config(None, ["seg.lr=2.5e-4"]).seg.lr == 0.00025
    assert load_config(None, ["cam.backbone.pretrained=null"]).cam.backbone.pretrained is None
    assert load_config(None, ["cam.backbone.pretrained=weights/r50.pth"]).cam.backbone.pretrained == "weights/r50.pth"
    assert load_config(None, ["conta.mode=baseline"]).conta.mode == "baseline"


def test_bool_fields_take_yaml_booleans_only() -> None:
    # YAML 1.1 (PyYAML) spells booleans true/false, yes/no, on/off: all accepted, the same as in a file
    assert load_config(None, ["cam.flip=false"]).cam.flip is False
    assert load_config(None, ["cam.flip=yes"]).cam.flip is True
    assert load_config(None, ["cam.flip=off"]).cam.flip is False
    # ...but a number or any other word is not a boolean
    assert "cam.flip" in config_error(None, "cam.flip=1")
    assert "cam.flip" in config_error(None, "cam.flip=maybe")


def test_int_fields_reject_floats_bools_and_strings() -> None:
    assert "cam.epochs" in config_error(None, "cam.epochs=1.5")
    assert "cam.epochs" in config_error(None, "cam.epochs=2.0")
    assert "cam.epochs" in config_error(None, "cam.epochs=true")
    assert "cam.epochs" in config_error(None, "cam.epochs=five")
    assert "cam.lr" in config_error(None, "cam.lr=fast")
    assert "cam.lr" in config_error(None, "cam.lr=true")


def test_malformed_overrides(tmp_path: Path) -> None:
    assert "expected key.subkey=value" in config_error(None, "cam.lr")
    assert "empty key component" in config_error(None, "cam..lr=1")
    assert "cam.lr: expected a number" in config_error(None, "cam.lr.x=1")
    path = write(tmp_path, "cam:\n  lr: 0.05\n")
    msg = config_error(path, "cam.lr.x=1")
    assert "lr is not a section" in msg and "cam.lr.x=1" in msg


def test_replace_applies_overrides_and_revalidates() -> None:
    base = load_config(None)
    new = replace(base, ["cam.epochs=7"])
    assert new.cam.epochs == 7 and base.cam.epochs == 5
    with pytest.raises(ConfigError, match="cam.epochs"):
        replace(base, ["cam.epochs=0"])


# -- errors name the key and the file ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("cam:\n  lrr: 0.1\n", "cam.lrr"),                      # unknown key
        ("camm:\n  lr: 0.1\n", "camm"),                         # unknown section
        ("seg:\n  crf:\n    iterationz: 3\n", "seg.crf.iterationz"),
        ("cam:\n  epochs: 1.5\n", "cam.epochs"),                # wrong type
        ("cam:\n  scales: 1.0\n", "cam.scales"),                # scalar for a list
        ("cam:\n  scales: [1.0, big]\n", "cam.scales[1]"),      # wrong element type
        ("cam: 5\n", "cam"),                                    # scalar for a section
        ("cam:\n  lr: -0.1\n", "cam.lr"),                       # impossible values
        ("cam:\n  eval_threshold: 1.5\n", "cam.eval_threshold"),
        ("ir_label:\n  fg_threshold: 0.02\n", "ir_label.bg_threshold"),
        ("seg:\n  crf:\n    gt_prob: 1.0\n", "seg.crf.gt_prob"),
        ("run:\n  name: a/b\n", "run.name"),
        ("run:\n  amp: fp8\n", "run.amp"),                      # not one of the Literal choices
        ("pseudo_mask:\n  walk: lanczos\n", "pseudo_mask.walk"),
        ("pseudo_mask:\n  irn_amp: fp16\n", "pseudo_mask.irn_amp"),
        ("data:\n  synth:\n    pairs:\n      - {classes: [dog]}\n", "data.synth.pairs[0].classes"),
    ],
)
def test_bad_values_name_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    msg = config_error(path)
    assert key in msg
    assert str(path) in msg


def test_bad_override_is_blamed_on_the_override_not_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "cam:\n  lr: 0.05\nirn:\n  radius: 0\n")
    msg = config_error(path, "cam.bogus=1")
    assert msg.startswith("command-line override cam.bogus=1: unknown key cam.bogus") and str(path) not in msg
    msg = config_error(path, "cam.crop_size=100000", "cam.lr=0.1")
    assert msg.startswith("command-line override cam.crop_size=100000: cam.crop_size: must be in [16, 4096]")
    msg = config_error(path, "cam.scales=[1.0, 9]")
    assert msg.startswith("command-line override cam.scales=[1.0, 9]: cam.scales[1]: must be in (0, 4]")
    # the file's own mistake is still the file's, whatever else the command line sets
    msg = config_error(path, "cam.lr=0.1")
    assert msg.startswith(f"{path}: irn.radius") and "positive" in msg


@pytest.mark.parametrize(("override", "key"), [
    ("seg.crop_size=100000", "seg.crop_size"), ("cam.crop_size=8", "cam.crop_size"),
    ("irn.crop_size=5000", "irn.crop_size"), ("seg.test_size=0", "seg.test_size"),
    ("cam.resize_long=[320,99999]", "cam.resize_long[1]"), ("seg.scales=[0.5,100]", "seg.scales[1]"),
    ("irn.scale_range=[0.5,50]", "irn.scale_range[1]"), ("data.synth.image_size=100000", "data.synth.image_size"),
    ("conta.confounder_size=[32,100000]", "conta.confounder_size"),
])
def test_impossible_sizes_are_rejected_with_the_key(override: str, key: str) -> None:
    msg = config_error(None, override)
    assert msg.startswith(f"command-line override {override}: {key}: must be")


def test_each_threshold_is_named_for_its_own_mistake() -> None:
    assert "ir_label.fg_threshold: must be in (0, 1), got 1.5" in config_error(None, "ir_label.fg_threshold=1.5")
    assert "ir_label.bg_threshold: must be in (0, 1)" in config_error(None, "ir_label.bg_threshold=-0.1")
    msg = config_error(None, "ir_label.bg_threshold=0.4")
    assert "ir_label.bg_threshold: must be below ir_label.fg_threshold (0.3), got 0.4" in msg


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    msg = config_error(path)
    assert str(path) in msg and "not found" in msg


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "cam:\n  lr: [0.1\n")
    msg = config_error(path)
    assert str(path) in msg and "not valid YAML" in msg


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- cam\n- seg\n")
    msg = config_error(path)
    assert str(path) in msg and "mapping" in msg


# -- the resolved config round-trips -----------------------------------------------------------


def test_dump_yaml_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["cam.lr=1.0e-05", "cam.scales=[1.0,0.5]", "seg.crf.iterations=5",
                             "cam.backbone.pretrained=null", "run.name=exp", "data.tags_file=tags.csv",
                             "data.synth.pairs=[{classes: [dog, person], p: 0.25}]", "conta.inject_at=head"])
    text = dump_yaml(cfg)
    again = load_config(write(tmp_path, text, "resolved.yaml"))
    assert again == cfg
    assert to_dict(again) == to_dict(cfg)
    assert again.data.synth.pairs[0].p == 0.25 and again.cam.lr == 1e-05
