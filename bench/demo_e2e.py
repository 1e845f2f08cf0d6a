"""Time `make demo` end to end: dataset generation, every round of every stage, the report.

    PYTHONPATH=. .venv/bin/python bench/demo_e2e.py [--config configs/demo.yaml] [KEY=VALUE ...]

Runs `make demo CONFIG=<copy>` where the copy is the config with run.out_dir and data.root moved
to a fresh scratch folder (so nothing is reused and your runs/ and data/ are untouched) and the
overrides applied, e.g. conta.rounds=0 for the baseline round alone. The virtual environment must
exist (`make venv`): make is told not to rebuild it (-o), so installing is never timed. Prints the
wall time, the peak resident memory of the largest process (getrusage of the children) and the
report's first table (the main run's scores per round).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from conta.config import dump_yaml, load_config

REPO = Path(__file__).resolve().parent.parent
STAMP = REPO / ".venv" / ".conta-installed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="conta-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    cfg = load_config(args.config, [*args.overrides, f"run.out_dir={folder / 'runs'}", f"data.root={folder / 'data'}"])
    config = folder / "demo.yaml"
    config.write_text(dump_yaml(cfg))
    command = ["make", "-o", str(STAMP.relative_to(REPO)), "demo", f"CONFIG={config}"]
    print("$ " + " ".join(command), flush=True)
    started = time.perf_counter()
    log = folder / "demo.log"
    with log.open("w") as out:
        code = subprocess.call(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    report = cfg.run_dir / "report.md"
    if report.is_file():
        print(first_table(report.read_text()))
    print(f"make demo: exit {code}, {seconds / 60:.1f} min wall ({seconds:.0f} s), "
          f"peak RSS of the largest process {peak:.2f} GiB; log: {log if args.keep else 'removed'}")
    if args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)
    raise SystemExit(code)


def first_table(markdown: str) -> str:
    """The first table of the report: the main run's per-round scores."""
    lines = markdown.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


if __name__ == "__main__":
    main()
