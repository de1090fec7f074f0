"""Issue 15's AutoML benchmark: the four goals in one command.

``python benchmarks/automl.py [--quick] [--parts fidelity,recipe,scaling,joint]`` runs, one
after the other and each in its own process (a crash in one part is that part's result, the
others still run; each part keeps its own log under ``results/``):

1. ``fidelity`` -- ``automl_fidelity.py``: Hyperband/ASHA vs full-fidelity evolution vs random
   on one joint space, same wall-clock budget (goal: multi-fidelity reaches full fidelity's
   final val acc in <= 1/3 of its wall time);
2. ``recipe`` -- ``automl_recipe.py``: joint architecture + recipe search vs architecture-only
   with the default recipe (goal: >= 0.5 point test accuracy, or the numbers why not);
3. ``scaling`` -- ``automl_scaling.py``: the compound-scaling family vs width-, depth- and
   resolution-only scaling at the same measured latencies;
4. ``joint`` -- ``automl_joint.py``: joint architecture x pruning x bit-width vs search then
   compress, two latency targets on onnxruntime.

``--quick`` is passed to every part. The parts' output streams through; at the end every
``GOAL`` line they printed is printed again, together (a part that printed none says why in a
``GOAL <part>: NOT MET (...)`` line), with the host and its load. The whole log goes to
``results/cpu_automl_<stamp>[_quick].log``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from automl_common import RESULTS, loads, stamp, start_log  # noqa: E402
from goals import goal_line, host  # noqa: E402

HERE = Path(__file__).resolve().parent
#: part -> its script in this folder
PARTS = {
    "fidelity": "automl_fidelity.py",
    "recipe": "automl_recipe.py",
    "scaling": "automl_scaling.py",
    "joint": "automl_joint.py",
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="every part's smoke-test size")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    ap.add_argument("--log", type=Path, default=None, help="log file (default: results/...)")
    a = ap.parse_args(argv)
    a.parts = tuple(p for p in a.parts.split(",") if p)
    bad = [p for p in a.parts if p not in PARTS]
    if bad or not a.parts:
        ap.error(f"--parts: unknown {', '.join(bad) or '(none)'} (known: {', '.join(PARTS)})")
    return a


def run_part(part: str, quick: bool) -> tuple[list[str], str | None]:
    """Run one part's script, streaming its output; its ``GOAL`` lines and, when it printed
    none, why (missing script, exit status)."""
    script = HERE / PARTS[part]
    if not script.is_file():
        return [], f"not run: benchmarks/{PARTS[part]} is missing in this checkout"
    cmd = [sys.executable, str(script)] + (["--quick"] if quick else [])
    print(f"\n==== {part}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    goals: list[str] = []
    with subprocess.Popen(
        cmd, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None  # stdout=PIPE: always a stream
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith("GOAL "):
                goals.append(line.rstrip("\n"))
        rc = proc.wait()
    print(f"==== {part}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
    if goals:
        return goals, None
    return [], f"no GOAL line: {PARTS[part]} exited with status {rc}"


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    log = a.log or RESULTS / f"cpu_automl_{stamp()}{'_quick' if a.quick else ''}.log"
    start_log(log)
    t0 = time.perf_counter()
    print(
        f"issue 15 AutoML benchmark{' (quick)' if a.quick else ''}: parts {', '.join(a.parts)}; "
        f"host: {host()}; load average at start {loads()}"
    )
    lines: list[str] = []
    for part in a.parts:
        goals, why = run_part(part, a.quick)
        lines.extend(goals)
        if why is not None:
            lines.append(goal_line(part, False, why, "a GOAL line"))
    print(f"\nall parts: {time.perf_counter() - t0:.0f} s; load average at end {loads()}")
    print("every goal:")
    for line in lines:
        print(line)
    print(f"log: {log}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
