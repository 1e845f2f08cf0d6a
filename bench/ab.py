"""Run one benchmark against two source trees in turn (A, B, A, B, ...) and report the medians.

    OMP_NUM_THREADS=1 .venv/bin/python bench/ab.py --trees /tmp/conta-before . --repeat 5 \\
        --figure 'pseudo-mask .*: ([0-9.]+) CPU s' -- bench/pseudo_mask.py --images 3

Each run is `python <command>` with PYTHONPATH set to the tree, so the bench script is the same
file for both and only the `conta` package differs (make the "before" tree with `git archive
<commit> | tar -x -C /tmp/conta-before`). Alternating the trees spreads the drift of a shared
machine's load over both; `--figure` is a regular expression whose first group is the number to
compare (use CPU seconds where the machine is shared). Prints every run's figure, the medians,
and the ratio A / B (above 1: B is faster, for a time).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys


def run(tree: str, command: list[str], pattern: re.Pattern[str]) -> list[float]:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    out = subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{tree}: exit {out.returncode}\n{out.stdout}{out.stderr}")
    figures = [float(m.group(1)) for m in pattern.finditer(out.stdout)]
    if not figures:
        raise SystemExit(f"{tree}: no match for {pattern.pattern!r} in\n{out.stdout}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", nargs=2, required=True, metavar=("A", "B"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--figure", required=True, help="regex; group 1 is the figure (every match is one figure)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- script.py [args]")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    pattern = re.compile(args.figure)
    runs: dict[str, list[list[float]]] = {tree: [] for tree in args.trees}
    for i in range(args.repeat):
        for tree in args.trees if i % 2 == 0 else reversed(args.trees):
            runs[tree].append(run(tree, command, pattern))
            print(f"run {i + 1} {tree}: {runs[tree][-1]}", flush=True)
    a, b = args.trees
    for j in range(len(runs[a][0])):
        ma, mb = (statistics.median(r[j] for r in runs[t]) for t in (a, b))
        print(f"figure {j + 1}: median {a} {ma:.4g}, {b} {mb:.4g}, ratio {ma / mb:.3f}")


if __name__ == "__main__":
    main()
