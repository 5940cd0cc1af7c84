"""Clips per hour back to back: the worker's overlap of encoding with the next clip's denoising.

    python -m bench.throughput [--arch xt --device cuda --plan fast] [--clips 6] [--format mp4]
    python -m bench.throughput --arch tiny --device cpu [--frames 25 --resolution 1024]  # CPU

Two ways of making the same clips (same pictures, seeds and options) with the same engine:

- sequential: each clip is generated, then encoded, then the next one starts: a bot without the
  overlap;
- worker: `LocalJobQueue`, the bot's own worker, with every clip submitted at once: the engine
  thread starts the next clip while the encoder thread encodes the last one.

Both use the real engine and the real encoder (`generation.encode.encode_clip`). Reported: clips
per hour each way, the ratio, and the mean generate and encode seconds of a clip. The ideal
ratio is n(generate + encode) / (n max(generate, encode) + min(generate, encode)) for n clips:
encoding disappears behind the GPU but for the first and last clip.
`--arch xt` builds the full-size SVD-XT architecture with random weights (bench/engine.py's
builder), no download; `--arch tiny` the tiny random model on the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.engine import (
    MODEL,
    CopyLoader,
    build_svd_xt,
    machine,
    picture,
    quiet_libraries,
    stop_on_sigterm,
    write,
)
from generation.encode import encode_clip
from generation.engine import SVDEngine
from generation.images import target_size
from generation.jobs import EventKind, JobRequest
from generation.options import AnimateOptions
from generation.plans import GPU_PLANS, MemoryMode, PlanSettings
from generation.queue import FairQueue
from generation.tiny import build_tiny_pipeline
from generation.worker import LocalJobQueue, open_prepared

MAX_BYTES = 10 << 20


def make_engine(
    args: argparse.Namespace,
    *,
    memory_mode: MemoryMode | None = None,
    plan_settings: PlanSettings | None = None,
) -> SVDEngine:
    """The engine on a random model of `args.arch`, loaded (and warmed up) under `args.plan` on
    CUDA, the CPU plan otherwise, or `memory_mode` when given."""
    on_cuda = args.device.startswith("cuda")
    if on_cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here; use --arch tiny --device cpu")
    if args.arch == "xt":
        master = build_svd_xt(args.device if on_cuda else "cpu")
    else:
        master = build_tiny_pipeline(num_frames=args.frames)
    master.to("cpu", dtype=torch.float16 if on_cuda else torch.float32)
    if memory_mode is None:
        memory_mode = args.plan if on_cuda else "auto"
    engine = SVDEngine(
        [MODEL],
        device=args.device,
        memory_mode=memory_mode,
        resolution=args.resolution,
        plan_settings=plan_settings,
        loader=CopyLoader(master),
    )
    engine.load()
    return engine


def jobs(args: argparse.Namespace, workdir: Path) -> list[JobRequest]:
    width, height = target_size(16, 9, args.resolution)
    requests = []
    for index in range(args.clips):
        path = workdir / f"input{index}.png"
        picture(width, height, seed=index).save(path)
        options = AnimateOptions(
            num_inference_steps=args.steps, seed=3000 + index, format=args.format
        )
        requests.append(JobRequest(f"clip{index}", index, options, path, MAX_BYTES))
    return requests


def sequential(engine: SVDEngine, requests: list[JobRequest], out: Path) -> dict[str, Any]:
    generate: list[float] = []
    encode: list[float] = []
    started = time.perf_counter()
    for request in requests:
        image = open_prepared(request.input_path)
        clock = time.perf_counter()
        result = engine.run(image, request.options, lambda _p: None, lambda: False)
        generate.append(time.perf_counter() - clock)
        clip = encode_clip(
            result.frames,
            out / f"{request.job_id}.{request.options.format}",
            format=request.options.format,
            fps=request.options.output_fps,
            max_bytes=request.max_bytes,
        )
        encode.append(clip.seconds)
    return {
        "seconds": time.perf_counter() - started,
        "generate_seconds": statistics.mean(generate),
        "encode_seconds": statistics.mean(encode),
    }


async def overlapped(engine: SVDEngine, requests: list[JobRequest], out: Path) -> dict[str, Any]:
    runtime = LocalJobQueue(
        engine,
        output_dir=out,
        queue=FairQueue(max_per_user=len(requests), max_waiting=len(requests)),
        encoder=encode_clip,
        job_timeout=None,
    )
    stream = runtime.events()
    await runtime.start()
    await runtime.loaded()
    started = time.perf_counter()
    for request in requests:
        await runtime.submit(request)
    done = 0
    async for event in stream:
        if event.terminal:
            if event.kind is not EventKind.DONE:
                raise SystemExit(f"{event.job_id}: {event.kind.value} {event.error}")
            done += 1
            if done == len(requests):
                break
    seconds = time.perf_counter() - started
    await runtime.stop(0)
    return {"seconds": seconds}


def run(args: argparse.Namespace) -> dict[str, Any]:
    engine = make_engine(args)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        requests = jobs(args, workdir)
        # Clips first, so that neither way pays for a first call's set-up.
        for _ in range(args.warmup):
            sequential(engine, requests[:1], workdir)
        # The worker's pass first: whatever warming up is left (on the CPU the first clips
        # after the set-up were seen slower) then favours the sequential pass, so the overlap's
        # gain is understated, never inflated.
        worker = asyncio.run(overlapped(engine, requests, workdir / "worker"))
        # Half the answer, kept should the time limit stop the sequential pass.
        write(
            {
                "machine": machine(args.device),
                "args": vars(args),
                "plan": engine.plan_for(None),
                "partial": "worker only: the sequential pass did not finish",
                "worker": worker,
            },
            args.out,
        )
        alone = sequential(engine, requests, workdir)
    plan = engine.plan_for(None)
    engine.close()
    generate, encode = alone["generate_seconds"], alone["encode_seconds"]
    per_hour = {
        "sequential": 3600 * args.clips / alone["seconds"],
        "worker": 3600 * args.clips / worker["seconds"],
    }
    return {
        "machine": machine(args.device),
        "args": vars(args),
        "plan": plan,
        "clips": args.clips,
        "generate_seconds": round(generate, 3),
        "encode_seconds": round(encode, 3),
        "clips_per_hour": {k: round(v, 1) for k, v in per_hour.items()},
        "speedup": round(per_hour["worker"] / per_hour["sequential"], 3),
        "ideal_speedup": round(ideal_speedup(args.clips, generate, encode), 3),
    }


def ideal_speedup(clips: int, generate: float, encode: float) -> float:
    """The best overlap can do for `clips` back to back: n(g + e) one after the other against
    n max(g, e) + min(g, e) overlapped (the first clip's generating or the last one's encoding
    has nothing beside it). Tends to (g + e) / max(g, e) for many clips."""
    return clips * (generate + encode) / (clips * max(generate, encode) + min(generate, encode))


def report(result: dict[str, Any]) -> str:
    rate = result["clips_per_hour"]
    return (
        f"plan {result['plan']}: {result['clips']} clips, generate {result['generate_seconds']:.2f}"
        f" s + encode {result['encode_seconds']:.2f} s each\n"
        f"sequential {rate['sequential']:.0f} clips/h · worker (overlapped) "
        f"{rate['worker']:.0f} clips/h · {result['speedup']:.2f}x "
        f"(ideal {result['ideal_speedup']:.2f}x)"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__)
    parser.add_argument("--arch", choices=("xt", "tiny"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--plan", choices=GPU_PLANS, default="fast", help="CUDA only")
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1, help="clips made before either pass")
    parser.add_argument("--steps", type=int, default=None, help="25 (xt), 8 (tiny)")
    parser.add_argument("--frames", type=int, default=4, help="the tiny model's frames")
    parser.add_argument("--resolution", type=int, default=None, help="1024 (xt), 256 (tiny)")
    parser.add_argument("--format", choices=("mp4", "gif"), default="mp4")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: none)")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 25 if args.arch == "xt" else 8
    if args.resolution is None:
        args.resolution = 1024 if args.arch == "xt" else 256
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    stop_on_sigterm()
    result = run(args)
    print(report(result))
    write(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
