"""The `conta` command line: thin wrappers that load a config and call a stage.

Every command that runs a stage takes `--config` (alias `--config-path`, as in deeplab-pytorch),
an optional `--run-dir`, an optional `--round`, `--devices N` and trailing `section.key=value`
overrides. Under torchrun (or with `--devices N`, which starts torchrun) every process runs the
same command and joins the process group described by its environment (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from conta import __version__
from conta.config import Config, DataConfig, load_config
from conta.engine.device import cores_per_process, resolve_device
from conta.engine.distributed import (barrier, init_distributed, launched_rank, launched_world_size, rank, teardown,
                                      torchrun_command, world_size)
from conta.errors import ContaError
from conta.registry import DATASETS

if TYPE_CHECKING:
    from conta.stages.round_context import RoundContext

Handler = Callable[[argparse.Namespace, Config], int | None]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        _take_trailing_overrides(args, extra, getattr(args, "command_parser", parser))
    if not hasattr(args, "handler"):  # a command group without its subcommand: show that group
        getattr(args, "help_of", parser).print_help()
        return 2
    devices = getattr(args, "devices", None)
    single = getattr(args, "single_process", False)
    if single and launched_rank() > 0:
        return 0  # a one-process command started under torchrun: rank 0 does it, alone
    try:
        if devices is not None and devices != launched_world_size():  # torchrun's processes see their own count
            return _launch(devices, argv)
        cfg = _config_from_args(args)
        if not single:
            init_distributed(resolve_device(cfg.run.device))
        status = int(args.handler(args, cfg) or 0)
        # Leave together: destroying the process group while a peer is still inside the last
        # collective aborts that peer (Gloo: "terminate called without an active exception").
        barrier()
        return status
    except ContaError as exc:
        where = f" (process {rank()} of {world_size()})" if world_size() > 1 else ""
        print(f"conta: error{where}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the environment failing outside the write helpers, which raise WriteError
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"conta: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("conta: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        teardown()


def _take_trailing_overrides(args: argparse.Namespace, extra: list[str], command: argparse.ArgumentParser) -> None:
    """KEY=VALUE overrides after an option (`a=1 --round 0 b=2`): argparse gives the first run
    of positionals to `overrides` and leaves the rest over; they join it, in order. Anything
    else left over is named, with the usage of the command it was given to (exits 2)."""
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown:
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not any(action.dest == "overrides" and not action.option_strings for action in command._actions):
        command.error(f"this command takes no KEY=VALUE config overrides: {' '.join(extra)}")
    args.overrides = [*args.overrides, *extra]


def _launch(devices: int, argv: list[str]) -> int:
    """Run this command in `devices` processes under torchrun on this node; its exit status."""
    if launched_world_size() > 1:
        raise ContaError(f"--devices {devices}: already one of {launched_world_size()} torchrun processes; "
                         "leave --devices out under torchrun")
    return subprocess.call(torchrun_command(devices, argv))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conta",
        description="Weakly-supervised semantic segmentation with causal intervention (CONTA).",
    )
    parser.add_argument("--version", action="version", version=f"conta {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    _stage(sub, "run", "run the whole pipeline: round 0 (baseline) and CONTA rounds 1..T, then the report",
           _cmd_run, extra=_run_args)
    _stage(sub, "study", "CONTA and both controls for several seeds: mean ± sd over seeds and paired-t intervals",
           _cmd_study, extra=_study_args)
    _add_cam_commands(sub)

    _stage(sub, "pseudo-mask", "stages 2-4 of a round: seed labels, IRN training, random-walk pseudo-masks",
           _cmd_pseudo_mask, extra=_pseudo_mask_args)
    _stage(sub, "ir-label", "stage 2: seed labels (fg / bg / ignore) from the round's CAMs",
           _cmd_pseudo_mask).set_defaults(steps="ir_label")
    irn = sub.add_parser("irn", help="stage 3: the inter-pixel relation network")
    irn_sub = irn.add_subparsers(title="irn commands", metavar="COMMAND")
    _stage(irn_sub, "train", "train the IRN on the round's seed labels", _cmd_pseudo_mask).set_defaults(steps="irn")
    _stage(sub, "random-walk", "stage 4: pseudo-masks by the random walk of CAMs on IRN boundaries",
           _cmd_pseudo_mask).set_defaults(steps="pseudo_mask")
    upgrade = "rewrite an IRN model.pt of the previous layout with the backbone layout of the config it was trained with"
    _stage(irn_sub, "upgrade", upgrade, _cmd_irn_upgrade, single_process=True)

    data = sub.add_parser("data", help="datasets: generate the synthetic default, check a dataset")
    data_sub = data.add_subparsers(title="data commands", metavar="COMMAND")
    _stage(data_sub, "synth", "write the synthetic confounded dataset in VOC layout", _cmd_data_synth,
           extra=_synth_args, single_process=True)
    _add_dataset_commands(data_sub)
    weights = sub.add_parser("weights", help="pretrained weights: convert Caffe and deeplab-pytorch files")
    _add_weights_commands(weights.add_subparsers(title="weights commands", metavar="COMMAND"))

    _stage(sub, "pretrain", "train the synthetic stand-in for ImageNet weights (the demo's `synthetic` backbones)",
           _cmd_pretrain, extra=_pretrain_args, single_process=True)

    _add_seg_commands(sub)
    evaluation = sub.add_parser("eval", help="evaluate predictions against ground truth")
    eval_sub = evaluation.add_subparsers(title="eval commands", metavar="COMMAND")
    masks = eval_sub.add_parser("masks", help="mIoU of a folder of predicted PNGs")
    masks.add_argument("--pred", required=True, type=Path, help="folder of <id>.png predictions")
    masks.add_argument("--config", "--config-path", dest="config", type=Path, help="YAML config whose data section to use")
    masks.add_argument("--dataset", help="overrides data.dataset, a registered dataset name "
                                          "(default: synthetic, i.e. any VOC-layout folder)")
    masks.add_argument("--root", type=Path, help="dataset root; overrides data.root")
    masks.add_argument("--split", required=True, help="the split whose images are scored (e.g. val, train_aug, val2014)")
    masks.add_argument("--json", type=Path, help="also write the scores as JSON here")
    masks.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.cache_dir=/scratch")
    masks.set_defaults(handler=_cmd_eval_masks, single_process=True)
    for command in sub.choices.values():
        command.set_defaults(help_of=command)
    _name_command_parsers(parser)
    return parser


def _name_command_parsers(parser: argparse.ArgumentParser) -> None:
    """Each (sub)command records its own parser, whose usage an argument error shows."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                command.set_defaults(command_parser=command)
                _name_command_parsers(command)


def _stage(sub: argparse._SubParsersAction, name: str, help_text: str, handler: Handler,
           extra: Callable[[argparse.ArgumentParser], None] | None = None,
           single_process: bool = False) -> argparse.ArgumentParser:
    """A command on a run's config; `single_process` ones take no --devices, and under torchrun
    only rank 0 runs them."""
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--config", "--config-path", dest="config", type=Path, help="YAML config (default: built-in defaults)")
    p.add_argument("--run-dir", type=Path, help="run directory (default: <run.out_dir>/<run.name>)")
    p.add_argument("--round", type=int, default=0, help="round index t (default 0)")
    if single_process:
        p.set_defaults(single_process=True)
    else:
        p.add_argument("--devices", type=_positive_int, metavar="N",
                       help="run in N processes, one per GPU, by starting torchrun on this node "
                            "(the same as `torchrun --standalone --nproc_per_node=N -m conta ...`)")
    if extra is not None:
        extra(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. cam.lr=0.05")
    p.set_defaults(handler=handler)
    return p


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _config_from_args(args: argparse.Namespace) -> Config:
    overrides = list(getattr(args, "overrides", []) or [])
    run_dir = getattr(args, "run_dir", None)
    if run_dir is not None:
        overrides += [f"run.out_dir={run_dir.parent}", f"run.name={run_dir.name}"]
    return load_config(getattr(args, "config", None), overrides)


def _round(args: argparse.Namespace, cfg: Config) -> RoundContext:
    """Round --round as `conta run` gives it to its stages: its seed is run.seed + t (conta.vary_seed)."""
    from conta.stages.round_context import RoundContext

    return RoundContext.of(cfg, args.round)


# -- commands --------------------------------------------------------------------------------


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--control", choices=["baseline", "mask"],
                   help="run a control instead of CONTA: the baseline repeated, or the previous mask fed in place of M")
    p.add_argument("--with-controls", action="store_true",
                   help="after the CONTA run, run both controls (sharing round 0) and compare them in the report")
    p.add_argument("--jobs", type=_positive_int, default=1, metavar="N",
                   help="with --with-controls on one machine: after round 0, run the three runs' later rounds "
                        "in N processes side by side (CPU: 3 on 2 cores finish ~1.4x sooner)")


def _cmd_run(args: argparse.Namespace, cfg: Config) -> int:
    from conta.stages.rounds import run_pipeline

    return run_pipeline(cfg, control=args.control, with_controls=args.with_controls, jobs=args.jobs)


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="folder for <name>.pt and its recipe <name>.json (default: the run directory)")


def _cmd_pretrain(args: argparse.Namespace, cfg: Config) -> int:
    from conta.stages.pretrain import pretrain

    command = " ".join(["conta pretrain", *(["--config", str(args.config)] if args.config else []), *args.overrides])
    pretrain(cfg, args.out, command=command)
    return 0


def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=_seed_list, default=[0, 1, 2], metavar="S,S,...",
                   help="comma-separated seeds; seed s sets run.seed=s for all of its runs (default: 0,1,2)")
    p.add_argument("--jobs", type=_positive_int, default=1, metavar="N",
                   help="run every seed's rounds in N processes side by side, round 0 of a seed before its "
                        "later rounds (as conta run --with-controls --jobs N)")


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected one or more different seeds >= 0, got {text!r}")
    return seeds


def _cmd_study(args: argparse.Namespace, cfg: Config) -> int:
    from conta.stages.study import run_study

    return run_study(cfg, args.seeds, jobs=args.jobs)


def _pseudo_mask_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", default="ir_label,irn,pseudo_mask",
                   help="comma-separated steps to run, in pipeline order (default: ir_label,irn,pseudo_mask)")


def _cmd_pseudo_mask(args: argparse.Namespace, cfg: Config) -> int:
    from conta.stages.pseudo_mask import parse_steps, run_pseudo_mask_stages

    run_pseudo_mask_stages(_round(args, cfg), parse_steps(args.steps))
    return 0


def _cmd_irn_upgrade(args: argparse.Namespace, cfg: Config) -> int:
    from conta.stages.irn import upgrade_irn

    upgrade_irn(_round(args, cfg))
    return 0


def _add_cam_commands(sub: argparse._SubParsersAction) -> None:
    cam = sub.add_parser("cam", help="stage 1: the CAM classifier (train, infer, eval, show)")
    cam_sub = cam.add_subparsers(title="cam commands", metavar="COMMAND")
    _stage(cam_sub, "train", "train the round's multi-label classifier (resumes after an interruption)",
           _cmd_cam).set_defaults(cam_step="train")
    _stage(cam_sub, "infer", "multi-scale + flip CAMs of every image of data.infer_split",
           _cmd_cam).set_defaults(cam_step="infer")
    _stage(cam_sub, "eval", "CAM mIoU on data.eval_split: threshold sweep, trivial baselines, leakage",
           _cmd_cam).set_defaults(cam_step="eval")
    _stage(cam_sub, "show", "a PNG of one image with its CAMs", _cmd_cam_show, extra=_cam_show_args,
           single_process=True)


def _cmd_cam(args: argparse.Namespace, cfg: Config) -> int:
    from conta.stages import cam
    from conta.stages.rounds import context_for_round

    rnd = _round(args, cfg)
    if args.cam_step == "eval":
        cam.evaluate(rnd)
        return 0
    step = cam.train if args.cam_step == "train" else cam.infer
    step(rnd, context_for_round(rnd))
    return 0


def _cam_show_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--id", required=True, dest="image_id", help="image id (of data.infer_split)")
    p.add_argument("--out", type=Path, help="PNG to write (default: round_<t>/cam/show_<id>.png)")


def _cmd_cam_show(args: argparse.Namespace, cfg: Config) -> int:
    from conta.stages import cam
    rnd = _round(args, cfg)
    out = args.out or rnd.paths.cam / f"show_{args.image_id}.png"
    cam.show(rnd, args.image_id, out)
    return 0


def _synth_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="output folder (default: data.root)")
    p.add_argument("--seed", type=int, help="generator seed (default: data.synth.seed)")


def _cmd_data_synth(args: argparse.Namespace, cfg: Config) -> int:
    from conta.data.synthetic import generate

    synth = cfg.data.synth
    if args.seed is not None:
        synth.seed = args.seed
    out = args.out or Path(cfg.data.root)
    summary = generate(synth, out, progress=True)
    print(summary.describe() if hasattr(summary, "describe") else summary)
    print(f"dataset written to {out}")
    return 0


def _cmd_eval_masks(args: argparse.Namespace, cfg: Config) -> int:
    from conta.data.build import build_dataset
    from conta.eval.evaluate import evaluate_folder
    from conta.eval.metrics import format_table
    from conta.io import save_json

    data = _data_config(args, cfg)
    scores = evaluate_folder(args.pred, build_dataset(data, args.split, need_images=False))
    print(format_table(scores, f"{args.pred} vs {data.root} [{args.split}]"))
    if args.json:
        save_json(args.json, scores)
        print(f"scores written to {args.json}")
    return 0


# -- datasets and weights (conta.stages.data_check, conta.data.voc12, conta.weights.convert) ----


def _add_dataset_commands(data_sub: argparse._SubParsersAction) -> None:
    for name, help_text, handler in (
        ("check", "report what a dataset root holds, what is missing and which files do not decode "
                  "(counts, first paths); exits 1 on any problem", _cmd_data_check),
        ("prepare", "make the derived files now: tag caches, the COCO index and semantic masks", _cmd_data_prepare),
    ):
        p = data_sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", "--config-path", dest="config", type=Path, help="YAML config whose data section to use")
        p.add_argument("--dataset", help="overrides data.dataset (a registered dataset name)")
        p.add_argument("--root", type=Path, help="overrides data.root")
        p.add_argument("--split", action="append", help="a split to cover (repeatable; default: the dataset's usual ones)")
        if name == "check":
            p.add_argument("--workers", type=_positive_int, default=cores_per_process(1),
                           help="processes decoding the files (default: all CPU cores)")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.cache_dir=/scratch")
        p.set_defaults(handler=handler, single_process=True)
    lists = data_sub.add_parser("voc-lists", help="write VOC2012 train_aug.txt from the SBD and VOC lists",
                                description="train_aug = SBD train + SBD val + VOC train - VOC val (10,582 ids)")
    lists.add_argument("--root", required=True, type=Path, help="VOCdevkit/VOC2012")
    lists.add_argument("--sbd", required=True, type=Path, help="SBD's benchmark_RELEASE folder")
    lists.add_argument("--out", type=Path, help="output folder (default: <root>/ImageSets/SegmentationAug)")
    lists.set_defaults(handler=_cmd_data_voc_lists, config=None, overrides=[], single_process=True)
    masks = data_sub.add_parser("sbd-masks", help="write VOC2012 SegmentationClassAug/ from SBD's .mat files",
                                description="index PNGs for SBD train + val + VOC train + val: the official VOC "
                                            "mask where one exists, else SBD's cls/<id>.mat (no SciPy needed)")
    masks.add_argument("--root", required=True, type=Path, help="VOCdevkit/VOC2012")
    masks.add_argument("--sbd", required=True, type=Path, help="SBD's benchmark_RELEASE folder")
    masks.add_argument("--workers", type=_positive_int, default=cores_per_process(1),
                       help="processes (default: all CPU cores)")
    masks.set_defaults(handler=_cmd_data_sbd_masks, config=None, overrides=[], single_process=True)


def _add_weights_commands(weights_sub: argparse._SubParsersAction) -> None:
    p = weights_sub.add_parser("convert", help="convert Caffe or deeplab-pytorch weights into a conta checkpoint",
                               description="map the names, check every tensor by a strict load, write atomically")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--caffemodel", type=Path, help="a DeepLab v2 ResNet .caffemodel, or an MSRA ImageNet ResNet")
    source.add_argument("--deeplab-pytorch", type=Path, help="a .pth saved by kazuto1011/deeplab-pytorch")
    p.add_argument("--out", required=True, type=Path, help="the converted .pth (use it as seg.pretrained)")
    p.add_argument("--class-names", type=Path, help="one class name per line, background first or left out")
    p.set_defaults(handler=_cmd_weights_convert, config=None, overrides=[], single_process=True)


def _data_config(args: argparse.Namespace, cfg: Config) -> DataConfig:
    data = cfg.data
    if args.dataset:
        DATASETS.check(args.dataset, "--dataset")
        data = dataclasses.replace(data, dataset=args.dataset)
    if args.root:
        data = dataclasses.replace(data, root=str(args.root))
    return data


def _cmd_data_check(args: argparse.Namespace, cfg: Config) -> int:
    from conta.stages.data_check import check_dataset

    report = check_dataset(_data_config(args, cfg), args.split, workers=args.workers)
    print(report.text())
    return 0 if report.ok else 1


def _cmd_data_prepare(args: argparse.Namespace, cfg: Config) -> int:
    from conta.stages.data_check import prepare_dataset

    prepare_dataset(_data_config(args, cfg), args.split)
    return 0


def _cmd_data_voc_lists(args: argparse.Namespace, cfg: Config) -> int:
    from conta.data.voc12 import LIST_COUNTS, write_train_aug

    path, n = write_train_aug(args.root, args.sbd, args.out)
    print(f"wrote {n} ids to {path}")
    if n != LIST_COUNTS["train_aug"]:
        print(f"warning: the official train_aug has {LIST_COUNTS['train_aug']} ids; check the SBD and VOC lists")
    return 0


def _cmd_data_sbd_masks(args: argparse.Namespace, cfg: Config) -> int:
    from conta.data.sbd import write_sbd_masks

    folder, n = write_sbd_masks(args.root, args.sbd, args.workers)
    print(f"{folder}: {n} masks")
    return 0


def _cmd_weights_convert(args: argparse.Namespace, cfg: Config) -> int:
    from conta.weights.convert import convert_caffemodel, convert_deeplab_pytorch, save_conversion

    names = None
    if args.class_names:
        try:
            names = [n.strip() for n in args.class_names.read_text().splitlines() if n.strip()]
        except FileNotFoundError:
            raise ContaError(f"{args.class_names}: class names file not found") from None
    if args.caffemodel:
        conversion = convert_caffemodel(args.caffemodel, names)
    else:
        conversion = convert_deeplab_pytorch(args.deeplab_pytorch, names)
    print(conversion.report())
    print(f"written to {save_conversion(conversion, args.out)}")
    return 0



def _add_seg_commands(sub: argparse._SubParsersAction) -> None:
    seg = sub.add_parser("seg", help="stage 5: the DeepLab segmenter, v2, v3 or v3+ (train / test / crf)")
    seg_sub = seg.add_subparsers(title="seg commands", metavar="COMMAND")
    _stage(seg_sub, "train", "train DeepLab (seg.model) on the round's pseudo-masks (or seg.label_source=gt)",
           _cmd_seg_train, extra=_seg_train_args)
    _stage(seg_sub, "test", "predict a split (palette PNGs) and score it when it has masks", _cmd_seg_test,
           extra=_seg_test_args)
    _stage(seg_sub, "crf", "dense-CRF post-processing of a split's predictions, scored", _cmd_seg_crf,
           extra=_seg_crf_args)
    demo = sub.add_parser("demo", help="segment your own image or webcam with a trained segmenter")
    demo_sub = demo.add_subparsers(title="demo commands", metavar="COMMAND")
    _stage(demo_sub, "single", "segment one image; save a figure of it, the overlay and a legend",
           _cmd_demo_single, extra=_demo_single_args, single_process=True)
    _stage(demo_sub, "live", "segment webcam frames live (needs OpenCV, a camera and a display)",
           _cmd_demo_live, extra=_demo_live_args, single_process=True)


def _model_path_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-path", type=Path, help="segmenter model.pt (default: round_<t>/seg/model.pt of the run)")


def _seg_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label-dir", type=Path, help="folder of <id>.png training labels (default: by seg.label_source)")


def _seg_test_args(p: argparse.ArgumentParser) -> None:
    _model_path_arg(p)
    p.add_argument("--split", help="split to predict (default: the first of data.val_splits)")
    p.add_argument("--keep-logits", action="store_true", help="also keep the stride-8 logits (seg crf reuses them)")


def _seg_crf_args(p: argparse.ArgumentParser) -> None:
    _model_path_arg(p)
    p.add_argument("--split", help="split to refine (default: the first of data.val_splits)")
    p.add_argument("--workers", type=int, help="CRF processes (default: one per CPU core)")


def _split(args: argparse.Namespace, cfg: Config) -> str:
    if args.split:
        return args.split
    if not cfg.data.val_splits:
        raise ContaError("no --split given and data.val_splits is empty")
    return cfg.data.val_splits[0]


def _cmd_seg_train(args: argparse.Namespace, cfg: Config) -> int:
    from conta.stages import seg

    seg.train(_round(args, cfg), label_dir=args.label_dir)
    return 0


def _cmd_seg_test(args: argparse.Namespace, cfg: Config) -> int:
    from conta.stages import seg

    seg.test(_round(args, cfg), _split(args, cfg), args.model_path, keep_logits=args.keep_logits)
    return 0


def _cmd_seg_crf(args: argparse.Namespace, cfg: Config) -> int:
    from conta.stages import seg

    seg.crf(_round(args, cfg), _split(args, cfg), args.model_path, workers=args.workers)
    return 0


def _demo_single_args(p: argparse.ArgumentParser) -> None:
    _model_path_arg(p)
    p.add_argument("--image-path", type=Path, required=True, help="the image to segment")
    p.add_argument("--crf", action="store_true", help="refine with the dense CRF (seg.crf)")
    p.add_argument("--out", type=Path, help="where to save the figure (default: <run dir>/demo/<image name>_seg.png "
                                            "with --run-dir, else <image name>_seg.png in the current folder)")


def _demo_live_args(p: argparse.ArgumentParser) -> None:
    _model_path_arg(p)
    p.add_argument("--camera-id", type=int, default=0, help="OpenCV camera index (default 0)")


def _cmd_demo_single(args: argparse.Namespace, cfg: Config) -> int:
    from conta.stages.demo import figure_name, single

    out = args.out or (args.run_dir / "demo" / figure_name(args.image_path, args.crf) if args.run_dir else None)
    single(_round(args, cfg), args.image_path, args.model_path, crf=args.crf, out=out)
    return 0


def _cmd_demo_live(args: argparse.Namespace, cfg: Config) -> int:
    from conta.stages.demo import live

    live(_round(args, cfg), args.model_path, camera_id=args.camera_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
