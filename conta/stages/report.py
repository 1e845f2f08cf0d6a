"""The per-round report of a run (and of its controls): Markdown tables, a chart, confounder images.

Each number is labelled with the split it was measured on; the table is the headline output of
`conta run` and is printed at the end of `make demo`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from conta.config import Config
from conta.eval.metrics import MIOU_OVER
from conta.io import atomic_path, load_npz, save_text
from conta.stages.paths import read_metrics, round_paths

SERIES_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]


def round_rows(cfg: Config) -> list[dict[str, Any]]:
    """One dict per finished round: the headline numbers, None where a stage has not run."""
    rows = []
    for t in range(cfg.conta.rounds + 1):
        metrics = read_metrics(round_paths(cfg, t).metrics)
        if not metrics:
            break
        row: dict[str, Any] = {"round": t}
        row["cam"] = _get(metrics, "cam", "miou")
        row["seeds_precision"] = _get(metrics, "ir_label", "precision")
        row["pseudo_mask"] = _get(metrics, "pseudo_mask", "miou")
        for split in cfg.data.val_splits:
            row[f"seg_{split}"] = _get(metrics, f"seg_{split}", "miou")
            if cfg.seg.crf.enabled:
                row[f"seg_{split}_crf"] = _get(metrics, f"seg_{split}_crf", "miou")
        for name, value in (metrics.get("cam", {}).get("leakage") or {}).items():
            share = value.get("share") if isinstance(value, dict) else value
            row[f"leak {name.replace(' -> background', '')}"] = share
        rows.append(row)
    return rows


def miou_definitions(cfg: Config) -> list[str]:
    """Which classes each column's mIoU averages over, as round 0's metrics.json records it."""
    metrics = read_metrics(round_paths(cfg, 0).metrics)
    sections = ["cam", "pseudo_mask"] + [f"seg_{s}{crf}" for s in cfg.data.val_splits for crf in ("", "_crf")]
    columns: dict[str, list[str]] = {}
    for section in sections:
        over = metrics.get(section, {}).get("miou_over")
        if over in MIOU_OVER:
            columns.setdefault(over, []).append(f"`{section}`")
    if not columns:
        return []
    return ["mIoU averages over the " + "; over the ".join(
        f"{MIOU_OVER[over]} for {', '.join(names)}" for over, names in columns.items())
        + " (metrics.json holds both means: `miou_gt_or_pred`, `miou_gt`).\n"]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no finished round)\n"
    keys = list(rows[0])
    for row in rows[1:]:
        keys += [k for k in row if k not in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def write_report(runs: list[Config]) -> Path:
    """Write runs[0]'s report.md (+ report.png, confounder images), comparing any control runs."""
    main = runs[0]
    out = main.run_dir
    parts = [f"# conta report: {main.run.name}\n",
             f"Dataset `{main.data.dataset}` at `{main.data.root}`; CAM and pseudo-mask mIoU on split "
             f"`{main.data.eval_split}`, segmentation mIoU on {', '.join('`' + s + '`' for s in main.data.val_splits)}. "
             f"Segmentation test scales 1 + {main.seg.msc_scales} (max), "
             f"{'with and without' if main.seg.crf.enabled else 'without'} CRF (`seg.crf.enabled`), initialisation "
             f"`{main.seg.pretrained or 'random'}`. All numbers are mIoU in percent; leakage is the share of a "
             "class's CAM mass on its partner object or context (lower is better).\n"]
    parts += miou_definitions(main)
    series = {}
    for cfg in runs:
        rows = round_rows(cfg)
        series[cfg.conta.mode] = rows
        parts.append(f"## {cfg.conta.mode} (`{cfg.run_dir}`)\n")
        parts.append(markdown_table(rows))
    if len(runs) > 1:
        parts.append("## CONTA against the controls, per round\n")
        parts.append(markdown_table(comparison_rows(series, main.data.val_splits)))
    chart = out / "report.png"
    draw_chart(series, ["pseudo_mask"] + [f"seg_{s}" for s in main.data.val_splits], chart)
    parts.append(f"![per-round mIoU]({chart.name})\n")
    for t in range(main.conta.rounds + 1):
        path = round_paths(main, t).confounder
        if path.is_file():
            image = out / f"confounders_round_{t}.png"
            draw_confounders(path, image)
            parts.append(f"Confounder set built after round {t}: ![confounders]({image.name})\n")
    parts += cam_overlay_section(runs)
    report = out / "report.md"
    save_text(report, "\n".join(parts))
    return report


def cam_overlay_section(runs: list[Config], n_images: int = 2) -> list[str]:
    """CAM overlays of the same training images in every round of every run, side by side."""
    from conta.stages.cam import show
    from conta.stages.round_context import RoundContext

    main = runs[0]
    first_maps = round_paths(main, 0).cam_maps
    ids = sorted(p.stem for p in first_maps.glob("*.npz"))[:n_images] if first_maps.is_dir() else []
    lines = ["## CAMs of the same images across rounds\n"] if ids else []
    for cfg in runs:
        for t in range(cfg.conta.rounds + 1):
            for image_id in ids:
                if not round_paths(cfg, t).cam_map(image_id).is_file():
                    continue
                out = main.run_dir / "figures" / f"cam_{cfg.conta.mode}_round{t}_{image_id}.png"
                show(RoundContext.of(cfg, t), image_id, out, log=lambda _: None)
                lines.append(f"{cfg.conta.mode}, round {t}, `{image_id}`: ![cam]({out.relative_to(main.run_dir)})\n")
    return lines


def comparison_rows(series: dict[str, list[dict[str, Any]]], val_splits: list[str]) -> list[dict[str, Any]]:
    keys = ["cam", "pseudo_mask"] + [f"seg_{s}" for s in val_splits]
    rows = []
    n_rounds = max(len(rows_) for rows_ in series.values())
    for t in range(n_rounds):
        row: dict[str, Any] = {"round": t}
        for mode, mode_rows in series.items():
            for key in keys:
                row[f"{key} ({mode})"] = mode_rows[t].get(key) if t < len(mode_rows) else None
        rows.append(row)
    return rows


def draw_chart(series: dict[str, list[dict[str, Any]]], keys: list[str], path: Path,
               size: tuple[int, int] = (720, 420)) -> None:
    """A small line chart (one panel per metric, one line per run) drawn with Pillow."""
    panel_w = size[0] // max(1, len(keys))
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    values = [r.get(k) for rows in series.values() for r in rows for k in keys if r.get(k) is not None]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    lo, hi = max(0.0, lo - 0.05), min(1.0, hi + 0.05)
    n_rounds = max((len(rows) for rows in series.values()), default=1)
    for p, key in enumerate(keys):
        x0, y0, x1, y1 = p * panel_w + 40, 30, (p + 1) * panel_w - 10, size[1] - 60
        draw.rectangle([x0, y0, x1, y1], outline=(160, 160, 160))
        draw.text((x0, 10), key, fill="black")
        draw.text((x0 - 36, y0 - 4), f"{100 * hi:.0f}", fill="black")
        draw.text((x0 - 36, y1 - 8), f"{100 * lo:.0f}", fill="black")
        for t in range(n_rounds):
            x = x0 + (x1 - x0) * (t / max(1, n_rounds - 1))
            draw.text((x - 3, y1 + 4), str(t), fill="black")

        def to_xy(t: int, v: float) -> tuple[float, float]:
            return x0 + (x1 - x0) * (t / max(1, n_rounds - 1)), y1 - (y1 - y0) * (v - lo) / max(hi - lo, 1e-6)

        for s, (mode, rows) in enumerate(series.items()):
            colour = SERIES_COLOURS[s % len(SERIES_COLOURS)]
            pts = [to_xy(r["round"], r[key]) for r in rows if r.get(key) is not None]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
            for x, y in pts:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    for s, mode in enumerate(series):
        colour = SERIES_COLOURS[s % len(SERIES_COLOURS)]
        draw.rectangle([40 + 120 * s, size[1] - 22, 52 + 120 * s, size[1] - 10], fill=colour)
        draw.text((58 + 120 * s, size[1] - 24), mode, fill="black")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def draw_confounders(npz_path: Path, out: Path, cell: int = 64) -> None:
    """One small grey image per confounder entry (class-average mask), named, in a row."""
    data = load_npz(npz_path)
    conf, names = data["confounders"], [str(n) for n in data["class_names"]]
    img = Image.new("RGB", (cell * len(names), cell + 16), "white")
    draw = ImageDraw.Draw(img)
    peak = float(conf.max()) or 1.0
    for k, (entry, name) in enumerate(zip(conf, names)):
        tile = Image.fromarray(np.uint8(255 * np.clip(entry / peak, 0, 1))).resize((cell, cell), Image.NEAREST)
        img.paste(tile.convert("RGB"), (k * cell, 16))
        draw.text((k * cell + 2, 2), name[:10], fill="black")
    with atomic_path(out) as tmp:
        img.save(tmp, format="PNG")


def _get(metrics: dict[str, Any], section: str, key: str) -> float | None:
    value = metrics.get(section, {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{100 * value:.1f}"
    return str(value)
