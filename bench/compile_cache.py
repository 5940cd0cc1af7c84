"""The fast plan's start-up, cold and with the compile cache a restart finds (COMPILE_CACHE_DIR).

    python -m bench.compile_cache --arch tiny --device cpu            # CPU: the tiny model
    python -m bench.compile_cache --arch xt --device cuda             # GPU: full-size SVD-XT

Two fresh processes load the engine under the fast plan with one empty cache folder: the first
compiles everything (a first start), the second finds the first one's kernels there (a restart,
or a new container on the same volume). Each reports its warm-up seconds and how many of its
inductor graphs came from the cache; the second must not have compiled any. Fresh processes,
because inside one process dynamo's in-memory caches would answer instead of the disk.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.engine import machine, quiet_libraries, write
from bench.throughput import make_engine
from generation.plans import PlanSettings

MARK = "compile-cache-result "


def one_start(args: argparse.Namespace) -> dict[str, Any]:
    """In a child process: load under the fast plan with the cache in `args.cache`."""
    started = time.perf_counter()
    settings = PlanSettings(compile_mode=args.compile_mode, compile_cache_dir=str(args.cache))
    engine = make_engine(args, memory_mode="fast", plan_settings=settings)
    hits, misses = engine.compile_cache_hits()
    return {
        "start_seconds": time.perf_counter() - started,
        "compile_seconds": engine.compile_seconds(),
        "graphs_from_cache": hits,
        "graphs_compiled": misses,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    starts = []
    with tempfile.TemporaryDirectory(prefix="svd-compile-cache-") as cache:
        for label in ("cold", "warm"):
            command = [sys.executable, "-m", "bench.compile_cache", "--child", "--cache", cache]
            command += ["--arch", args.arch, "--device", args.device]
            command += ["--resolution", str(args.resolution), "--frames", str(args.frames)]
            command += ["--compile-mode", args.compile_mode]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
            if done.returncode or not lines:
                sys.stderr.write(done.stderr[-4000:])
                raise SystemExit(f"the {label} start failed (exit {done.returncode})")
            starts.append({"start": label, **json.loads(lines[-1][len(MARK) :])})
    cold, warm = starts
    return {
        "bench": "compile_cache",
        "machine": machine(args.device),
        "arch": args.arch,
        "resolution": args.resolution,
        # make_plan gives the CPU inductor's default mode (autotuning is for GPUs).
        "compile_mode": args.compile_mode if args.device.startswith("cuda") else "default",
        "starts": starts,
        "warm_up_speedup": cold["compile_seconds"] / max(warm["compile_seconds"], 1e-9),
    }


def report(result: dict[str, Any]) -> str:
    lines = [f"{result['arch']} at {result['resolution']}, compile mode {result['compile_mode']}"]
    for s in result["starts"]:
        lines.append(
            f"{s['start']}: warm-up {s['compile_seconds']:.1f} s "
            f"(start {s['start_seconds']:.1f} s), {s['graphs_from_cache']} graphs from the "
            f"cache, {s['graphs_compiled']} compiled"
        )
    lines.append(f"warm-up {result['warm_up_speedup']:.1f}x faster with the cache")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.compile_cache", description=__doc__)
    parser.add_argument("--arch", choices=("xt", "tiny"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=4, help="the tiny model's frames")
    parser.add_argument("--resolution", type=int, default=None, help="1024 (xt), 256 (tiny)")
    parser.add_argument("--compile-mode", default=PlanSettings().compile_mode)
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: none)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.resolution is None:
        args.resolution = 1024 if args.arch == "xt" else 256
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    if args.child:
        print(MARK + json.dumps(one_start(args)), flush=True)
        return 0
    result = run(args)
    print(report(result))
    write(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
