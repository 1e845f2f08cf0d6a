"""`conta eval masks` end to end through `conta.cli.main`, plus --version / --help.

Geometry of the `tiny_voc` fixture's "val" split (24 x 32 images, see tests/_fixtures.py):
    img_002: person box rows 2..11 x cols 2..15 = 10 x 14 = 140 px, in a 12 x 16 ring of 255;
             background 768 - 192 = 576
    img_003: cat box rows 3..11 x cols 2..15 = 9 x 14 = 126 px (11 x 16 ring),
             dog box rows 14..21 x cols 18..29 = 8 x 12 = 96 px (10 x 14 ring);
             background 768 - 176 - 140 = 452
    scored pixels: background 1028, cat 126, dog 96, person 140; total 1390
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _fixtures import VocFixture

from conta import __version__
from conta.cli import main
from conta.data.palette import voc_palette
from conta.io import save_label_png

BG, CAT, DOG, PERSON = 1028, 126, 96, 140
TOTAL = BG + CAT + DOG + PERSON


def write_preds(voc: VocFixture, folder: Path, ids: list[str], transform=lambda m: m) -> Path:
    for image_id in ids:
        save_label_png(folder / f"{image_id}.png", transform(voc.masks[image_id].copy()), voc_palette())
    return folder


def run_eval(voc: VocFixture, pred: Path, tmp_path: Path, split: str = "val") -> tuple[int, Path]:
    out = tmp_path / "scores.json"
    code = main(["eval", "masks", "--pred", str(pred), "--root", str(voc.root), "--split", split, "--json", str(out)])
    return code, out


def test_fixture_pixel_counts(tiny_voc: VocFixture) -> None:
    # the module docstring's hand counts, checked once against the arrays written
    m2, m3 = tiny_voc.masks["img_002"], tiny_voc.masks["img_003"]
    assert [int((m2 == v).sum()) for v in (0, 1, 2, 3, 255)] == [576, 0, 0, 140, 52]
    assert [int((m3 == v).sum()) for v in (0, 1, 2, 3, 255)] == [452, 126, 96, 0, 94]


def test_perfect_predictions(tiny_voc: VocFixture, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred = write_preds(tiny_voc, tmp_path / "pred", tiny_voc.splits["val"])
    code, out = run_eval(tiny_voc, pred, tmp_path)
    assert code == 0
    scores = json.loads(out.read_text())
    assert set(scores) >= {"miou", "pixel_acc", "mean_acc", "fwiou", "per_class"}
    assert scores["miou"] == scores["pixel_acc"] == scores["mean_acc"] == scores["fwiou"] == 1.0
    assert scores["per_class"] == {"background": 1.0, "cat": 1.0, "dog": 1.0, "person": 1.0}
    printed = capsys.readouterr().out
    for name in ("background", "cat", "dog", "person", "mIoU"):
        assert name in printed
    assert "100.00" in printed and str(out) in printed


def test_all_background_prediction(tiny_voc: VocFixture, tmp_path: Path) -> None:
    pred = write_preds(tiny_voc, tmp_path / "pred", tiny_voc.splits["val"], lambda m: np.zeros_like(m))
    code, out = run_eval(tiny_voc, pred, tmp_path)
    assert code == 0
    s = json.loads(out.read_text())
    # background: TP 1028, union = 1390 (every scored pixel is either GT or predicted background)
    assert s["per_class"] == {"background": pytest.approx(BG / TOTAL), "cat": 0.0, "dog": 0.0, "person": 0.0}
    assert s["miou"] == pytest.approx(BG / TOTAL / 4)
    assert s["pixel_acc"] == pytest.approx(BG / TOTAL)
    assert s["mean_acc"] == pytest.approx(0.25)
    assert s["fwiou"] == pytest.approx((BG / TOTAL) ** 2)


def test_dog_predicted_as_cat(tiny_voc: VocFixture, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred = write_preds(tiny_voc, tmp_path / "pred", tiny_voc.splits["val"], lambda m: np.where(m == 2, 1, m))
    code, out = run_eval(tiny_voc, pred, tmp_path)
    assert code == 0
    s = json.loads(out.read_text())
    cat_iou = CAT / (CAT + DOG)  # TP 126, GT 126, predicted 126 + 96
    assert s["per_class"] == {"background": 1.0, "cat": pytest.approx(cat_iou), "dog": 0.0, "person": 1.0}
    assert s["miou"] == pytest.approx((1 + cat_iou + 0 + 1) / 4)
    assert s["pixel_acc"] == pytest.approx((TOTAL - DOG) / TOTAL)
    assert s["mean_acc"] == pytest.approx(0.75)
    assert s["fwiou"] == pytest.approx((BG + CAT * cat_iou + PERSON) / TOTAL)
    assert f"{100 * (2 + cat_iou) / 4:6.2f}" in capsys.readouterr().out  # mIoU in the table


def test_missing_prediction_is_an_error(tiny_voc: VocFixture, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred = write_preds(tiny_voc, tmp_path / "pred", ["img_002"])  # img_003 missing
    code, out = run_eval(tiny_voc, pred, tmp_path)
    assert code == 2
    err = capsys.readouterr().err
    assert "img_003.png" in err and "missing" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_empty_prediction_folder(tiny_voc: VocFixture, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _ = run_eval(tiny_voc, tmp_path / "nothing_here", tmp_path)
    assert code == 2
    assert "2 of 2 predictions missing" in capsys.readouterr().err


def test_prediction_with_a_value_outside_the_classes(tiny_voc: VocFixture, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    pred = write_preds(tiny_voc, tmp_path / "pred", tiny_voc.splits["val"])
    bad = tiny_voc.masks["img_003"].copy()
    bad[0, 0] = 4  # 3 classes: 0..3, and 255 = no label
    save_label_png(pred / "img_003.png", bad, voc_palette())
    code, _ = run_eval(tiny_voc, pred, tmp_path)
    assert code == 2
    err = capsys.readouterr().err
    assert str(pred / "img_003.png") in err and "4" in err


def test_prediction_of_the_wrong_size(tiny_voc: VocFixture, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred = write_preds(tiny_voc, tmp_path / "pred", tiny_voc.splits["val"])
    save_label_png(pred / "img_002.png", np.zeros((12, 16), np.uint8), voc_palette())
    code, _ = run_eval(tiny_voc, pred, tmp_path)
    assert code == 2
    err = capsys.readouterr().err
    assert str(pred / "img_002.png") in err and "differs" in err


def test_split_without_ground_truth(make_voc, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    voc = make_voc(masks=False)
    code, _ = run_eval(voc, tmp_path / "pred", tmp_path, split="train")
    assert code == 2
    assert "no ground-truth masks" in capsys.readouterr().err


def test_missing_split(tiny_voc: VocFixture, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _ = run_eval(tiny_voc, tmp_path / "pred", tmp_path, split="test")
    assert code == 2
    assert "test.txt" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"conta {__version__}"


def test_help_lists_the_commands(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "data", "eval"):
        assert f"    {command} " in out or f"    {command}\n" in out
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "masks" in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture) -> None:
    assert main([]) == 2
    assert "commands" in capsys.readouterr().out


def test_eval_masks_requires_its_arguments(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["eval", "masks", "--root", "x"])
    assert info.value.code == 2
    assert "--pred" in capsys.readouterr().err


def test_python_dash_m_conta() -> None:
    done = subprocess.run([sys.executable, "-m", "conta", "--version"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 0
    assert done.stdout.strip() == f"conta {__version__}"


def test_a_command_group_without_subcommand_shows_its_own_help(capsys):
    from conta.cli import main

    assert main(["seg"]) == 2
    out = capsys.readouterr().out
    assert "usage: conta seg" in out and "train" in out and "crf" in out


def test_eval_masks_reads_any_supported_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--dataset folder: the masks come from the folder reader, not from a VOC layout."""
    from _datasets import make_folder

    root = make_folder(tmp_path)
    pred = tmp_path / "pred"
    mask_a = np.zeros((30, 36), np.uint8)
    mask_a[5:20, 5:20] = 1
    save_label_png(pred / "a.png", mask_a, voc_palette())                      # cat, exactly right
    save_label_png(pred / "b.png", np.zeros((30, 36), np.uint8), voc_palette())  # dog missed
    out = tmp_path / "scores.json"
    assert main(["eval", "masks", "--pred", str(pred), "--dataset", "folder", "--root", str(root),
                 "--split", "val", "--json", str(out)]) == 0
    scores = json.loads(out.read_text())
    background = 2 * 30 * 36 - 2 * 225
    assert scores["per_class"]["cat"] == pytest.approx(1.0)
    assert scores["per_class"]["dog"] == pytest.approx(0.0)
    assert scores["per_class"]["background"] == pytest.approx(background / (background + 225))


def test_one_process_commands_under_torchrun_run_on_rank_0_alone(tmp_path: Path, monkeypatch) -> None:
    """`conta data synth` inside a torchrun job: rank 0 writes (no process group needed), rank 1 only returns."""
    small = ["data.synth.image_size=32", "data.synth.n_train=2", "data.synth.n_val=1", "data.synth.n_val_deconfounded=0"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)      # a process group could not even be set up
    for rank, out in (("1", tmp_path / "rank1"), ("0", tmp_path / "rank0")):
        monkeypatch.setenv("RANK", rank)
        assert main(["data", "synth", "--out", str(out), *small]) == 0
    assert not (tmp_path / "rank1").exists()
    assert (tmp_path / "rank0" / "synth.json").is_file()
