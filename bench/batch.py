"""Benchmark of the `batch` command: the same shared clips on this machine's workers and on a local Ray
cluster, to show what the cluster path costs when there is only one machine.

    python bench/batch.py [--clips d11 d12 d18 d20] [--backend auto] [--write-results]

Each configuration runs `run_stream.py batch` as a command of its own into an empty folder, so the wall time
includes everything a user waits for: imports, starting the workers (and the Ray cluster), loading the
networks, and the videos; "in the batch" is the batch's own time from its summary line (from the first job
handed out to the last result). A first small run fills the engine cache, so no configuration pays for an
ONNX export. --write-results replaces the "Batch" section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream.report import write_section

FACES = ROOT.parent / "shared" / "data" / "faces"
RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## Batch"
CONFIGS = {
    "local, 1 worker (in this process)": ["--workers", "1"],
    "local, 2 worker processes": ["--workers", "2"],
    "ray local, 1 actor": ["--ray", "local", "--workers", "1"],
    "ray local, 2 actors": ["--ray", "local", "--workers", "2"],
}
SUMMARY = re.compile(r"(\d+) done, (\d+) skipped, (\d+) failed.*; (\d+) frames edited in ([\d.]+) s")


def run_batch(clips: list[Path], out: Path, backend: str, extra: list[str]) -> tuple[float, int, float, str]:
    """Wall seconds, frames, the batch's own seconds, and the summary line of one `batch` command."""
    command = [sys.executable, str(ROOT / "run_stream.py"), "batch", *map(str, clips), "-o", str(out),
               "--model", "student", "--backend", backend, *extra]
    start = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    match = SUMMARY.search(done.stdout)
    if done.returncode != 0 or match is None or match.group(3) != "0":
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n"
                         f"{done.stderr[-3000:]}")
    return wall, int(match.group(4)), float(match.group(5)), match.group(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", nargs="+", default=["d11", "d12", "d18", "d20"],
                        help="clip names in ../shared/data/faces")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs of every configuration, in reverse order every other round, so that a "
                             "change in the machine's load falls on all of them alike")
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args()

    clips = [FACES / f"{name}.mp4" for name in args.clips]
    work = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    run_batch(clips[:1], work / "warm", args.backend, ["--workers", "1"])  # engine cache, file cache
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in args.configs}   # (wall, runner) s
    loads = [os.getloadavg()[0]]
    frames = 0
    for round_index in range(args.rounds):
        order = args.configs if round_index % 2 == 0 else args.configs[::-1]
        for name in order:
            out = work / f"{name.replace(' ', '_').replace(',', '')}_{round_index}"
            wall, frames, runner, summary = run_batch(clips, out, args.backend, CONFIGS[name])
            runs[name].append((wall, runner))
            loads.append(os.getloadavg()[0])
            print(f"{name}: {wall:.1f} s wall, {frames / wall:.1f} fps; {summary}", flush=True)

    base = statistics.median(wall for wall, _ in runs[args.configs[0]])
    lines = [
        SECTION, "",
        (f"`python bench/batch.py` ({', '.join(args.clips)}: {frames} frames with audio, demo pack student "
         f"path, backend {args.backend}, file-job defaults; {os.cpu_count()} CPUs, "
         f"{platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
         f"; {args.rounds} rounds, every other one in reverse order). Wall: the whole command (imports, "
         "probing the inputs, the runner, exit); runner: the batch's own timer, from handing out the work "
         "(starting the workers and the cluster, loading the networks included) to the last result. The "
         "machine is shared "
         f"with other jobs: load average (1 min) {min(loads):.1f} to {max(loads):.1f} during the runs."), "",
        "| configuration | wall s (each run) | runner s (each run) | fps (median wall) | wall / first row |",
        "|---|---|---|---|---|",
    ]
    for name, measured in runs.items():
        walls = " / ".join(f"{wall:.1f}" for wall, _ in measured)
        runners = " / ".join(f"{runner:.1f}" for _, runner in measured)
        median = statistics.median(wall for wall, _ in measured)
        lines.append(f"| {name} | {walls} | {runners} | {frames / median:.1f} | {median / base:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write_results:
        write_section(RESULTS, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
