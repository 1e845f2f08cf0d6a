"""study.md and study.json of `conta study`: every run's per-round numbers (the ones the run
report shows, `conta.stages.report.round_rows`) gathered over seeds and summarised by
`conta.eval.study_stats`."""

from __future__ import annotations

from pathlib import Path

from conta.config import Config
from conta.eval.study_stats import CONFIDENCE, PairedDifference, Spread, StudyEntry, Table, summarise
from conta.io import save_json, save_text
from conta.stages.report import round_rows

REFERENCE = "conta"
INTERVAL = (f"paired t, {100 * CONFIDENCE:.0f} %: mean ± t(n-1) · sd / sqrt(n) of the per-seed differences; "
            "t quantile by inverting the regularised incomplete beta function (no table)")


def seed_table(groups: dict[int, list[Config]]) -> Table:
    """run (conta.mode) -> (metric, round) -> seed -> value, from every finished round's metrics."""
    table: Table = {}
    for seed, runs in groups.items():
        for cfg in runs:
            cells = table.setdefault(cfg.conta.mode, {})
            for row in round_rows(cfg):
                for key, value in row.items():
                    if key != "round" and value is not None:
                        cells.setdefault((key, row["round"]), {})[seed] = value
    return table


def write_study(out: Path, base: Config, groups: dict[int, list[Config]]) -> tuple[Path, Path]:
    """Write out/study.json (fractions, as in metrics.json) and out/study.md (percent)."""
    entries = summarise(seed_table(groups), REFERENCE)
    seeds = sorted(groups)
    json_path, md_path = out / "study.json", out / "study.md"
    save_json(json_path, {
        "name": base.run.name, "seeds": seeds,
        "dataset": {"dataset": base.data.dataset, "root": base.data.root, "synth_seed": base.data.synth.seed},
        "runs": {str(s): {cfg.conta.mode: str(cfg.run_dir) for cfg in runs} for s, runs in groups.items()},
        "units": "fractions, as in each round's metrics.json",
        "interval": INTERVAL,
        "entries": [e.to_json() for e in entries],
    })
    save_text(md_path, markdown(base, seeds, entries))
    return md_path, json_path


def markdown(base: Config, seeds: list[int], entries: list[StudyEntry]) -> str:
    modes = list(dict.fromkeys(m for e in entries for m in e.runs))
    pairs = list(dict.fromkeys(p for e in entries for p in e.differences))
    seed_names = ", ".join(f"s{s}" for s in seeds)
    lines = [
        f"# conta study: {base.run.name}\n",
        f"Seeds {seed_names}: seed s sets `run.seed` = s for the whole run (`conta.vary_seed` = "
        f"{str(base.conta.vary_seed).lower()}); the dataset is the same for every seed (`{base.data.dataset}` at "
        f"`{base.data.root}`). CONTA and both controls of a seed share its round 0. CAM and pseudo-mask mIoU "
        f"on `{base.data.eval_split}`, segmentation mIoU on {', '.join('`' + s + '`' for s in base.data.val_splits)}; "
        "leakage is the share of a class's CAM mass on its partner object or context (lower is better). "
        "All numbers in percent.\n",
        "A run's cell: mean ± sample sd (ddof 1) over the seeds. A difference cell: the mean over seeds of "
        f"the per-seed difference and its {INTERVAL}; * marks an interval that excludes 0.\n",
        "| metric | round | " + " | ".join(modes) + " | " + " | ".join(p.replace(" - ", " − ") for p in pairs) + " |",
        "|---|---|" + "---|" * (len(modes) + len(pairs)),
    ]
    for e in entries:
        cells = [_spread_cell(e.runs.get(m), len(seeds)) for m in modes] + [_diff_cell(e.differences.get(p)) for p in pairs]
        lines.append(f"| {e.metric} | {e.round} | " + " | ".join(cells) + " |")
    lines += ["", "## Per-seed differences\n",
              "| metric | round | " + " | ".join(f"{p.replace(' - ', ' − ')}, s{s}" for p in pairs for s in seeds) + " |",
              "|---|---|" + "---|" * (len(pairs) * len(seeds))]
    for e in entries:
        cells = [_pct(e.differences[p].per_seed.get(s), signed=True) if p in e.differences else "–"
                 for p in pairs for s in seeds]
        lines.append(f"| {e.metric} | {e.round} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _spread_cell(sp: Spread | None, n_seeds: int) -> str:
    if sp is None:
        return "–"
    text = _pct(sp.mean) + ("" if sp.sd is None else f" ± {_pct(sp.sd)}")
    return text + (f" (n={len(sp.values)})" if len(sp.values) != n_seeds else "")


def _diff_cell(d: PairedDifference | None) -> str:
    if d is None:
        return "–"
    if d.low is None or d.high is None:
        return _pct(d.mean, signed=True)
    mark = " *" if d.excludes_zero else ""
    return f"{_pct(d.mean, signed=True)} [{_pct(d.low, signed=True)}, {_pct(d.high, signed=True)}]{mark}"


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.1f}"
