"""The `conta` command line: thin wrappers that load a config and call a stage.

Every command that runs a stage takes `--config` (alias `--config-path`, as in deeplab-pytorch),
an optional `--run-dir`, an optional `--round`, and trailing `section.key=value` overrides.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from conta import __version__
from conta.config import Config, load_config
from conta.errors import ContaError

Handler = Callable[[argparse.Namespace, Config], int | None]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        cfg = _config_from_args(args)
        return int(args.handler(args, cfg) or 0)
    except ContaError as exc:
        print(f"conta: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("conta: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conta",
        description="Weakly-supervised semantic segmentation with causal intervention (CONTA).",
    )
    parser.add_argument("--version", action="version", version=f"conta {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    _stage(sub, "run", "run the whole pipeline: round 0 (baseline) and CONTA rounds 1..T, then the report",
           _cmd_run, extra=_run_args)

    data = sub.add_parser("data", help="datasets: generate the synthetic default, check a dataset")
    data_sub = data.add_subparsers(title="data commands", metavar="COMMAND")
    _stage(data_sub, "synth", "write the synthetic confounded dataset in VOC layout", _cmd_data_synth,
           extra=_synth_args)

    evaluation = sub.add_parser("eval", help="evaluate predictions against ground truth")
    eval_sub = evaluation.add_subparsers(title="eval commands", metavar="COMMAND")
    masks = eval_sub.add_parser("masks", help="mIoU of a folder of predicted PNGs")
    masks.add_argument("--pred", required=True, type=Path, help="folder of <id>.png predictions")
    masks.add_argument("--root", required=True, type=Path, help="VOC-layout dataset root")
    masks.add_argument("--split", required=True, help="split list under ImageSets/Segmentation")
    masks.add_argument("--json", type=Path, help="also write the scores as JSON here")
    masks.set_defaults(handler=_cmd_eval_masks, config=None, overrides=[])
    return parser


def _stage(sub: argparse._SubParsersAction, name: str, help_text: str, handler: Handler,
           extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--config", "--config-path", dest="config", type=Path, help="YAML config (default: built-in defaults)")
    p.add_argument("--run-dir", type=Path, help="run directory (default: <run.out_dir>/<run.name>)")
    p.add_argument("--round", type=int, default=0, help="round index t (default 0)")
    if extra is not None:
        extra(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. cam.lr=0.05")
    p.set_defaults(handler=handler)
    return p


def _config_from_args(args: argparse.Namespace) -> Config:
    overrides = list(getattr(args, "overrides", []) or [])
    run_dir = getattr(args, "run_dir", None)
    if run_dir is not None:
        overrides += [f"run.out_dir={run_dir.parent}", f"run.name={run_dir.name}"]
    return load_config(getattr(args, "config", None), overrides)


# -- commands --------------------------------------------------------------------------------


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--control", choices=["baseline", "mask"],
                   help="run a control instead of CONTA: the baseline repeated, or the previous mask fed in place of M")
    p.add_argument("--with-controls", action="store_true",
                   help="after the CONTA run, run both controls (sharing round 0) and compare them in the report")


def _cmd_run(args: argparse.Namespace, cfg: Config) -> int:
    from conta.stages.rounds import run_pipeline

    return run_pipeline(cfg, control=args.control, with_controls=args.with_controls)


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
    from conta.eval.evaluate import evaluate_folder
    from conta.eval.metrics import format_table
    from conta.io import save_json

    scores = evaluate_folder(args.pred, args.root, args.split)
    print(format_table(scores, f"{args.pred} vs {args.root} [{args.split}]"))
    if args.json:
        save_json(args.json, scores)
        print(f"scores written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
