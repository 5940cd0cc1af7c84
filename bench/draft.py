"""Draft quality (feature caching, generation/feature_cache.py): what it saves and what it changes.

    python -m bench.draft --flops                         # anywhere: FLOPs of full-size SVD-XT
    python -m bench.draft --gpu [--plan fast] [--intervals 2,3]   # CUDA: seconds and difference

--flops. Builds the full-size SVD-XT UNet and VAE on the meta device (no memory, no weights) and
counts, with torch's FlopCounterMode, the FLOPs of one guided UNet call run whole and run on the
kept deep feature, and of the VAE decode of 25 frames. From them, the predicted speed-up of a
25-step clip for each cache interval, were the GPU bound by arithmetic alone.

--gpu. The full-size SVD-XT architecture with random weights (bench/engine.py's builder), one
engine under `--plan`: best quality and each draft interval on the same pictures and seeds,
interleaved, so that a clock drift slows all alike. Reports seconds per clip (median), the ratio
to best quality, and how far each draft clip's frames are from the best clip's of the same seed
(mean absolute difference in 0-255 and PSNR). With random weights the frames are noise, so the
difference says the function stays close, not how a real clip looks: that needs real weights.
`--gpu --arch tiny --device cpu` is the smoke test of the script where there is no GPU.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.engine import (
    MODEL,
    CopyLoader,
    build_svd_xt,
    free_memory,
    machine,
    picture,
    quiet_libraries,
    synchronizer,
    write,
)
from generation.engine import SVDEngine
from generation.feature_cache import FeatureCache
from generation.images import target_size
from generation.options import AnimateOptions
from generation.plans import GPU_PLANS, PlanSettings
from generation.tiny import build_tiny_pipeline

STEPS = 25
FRAMES = 25
DECODE_CHUNK = 8


# --- predicted: FLOPs ------------------------------------------------------------------------


def count_flops(call: Any) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad(), torch.device("meta"):
        call()
    return int(counter.get_total_flops())


def flops(resolution: int) -> dict[str, Any]:
    """FLOPs of SVD-XT's UNet (whole / reused) and VAE decode at `resolution`, on meta."""
    width, height = target_size(16, 9, resolution)
    pipe = build_svd_xt("meta")
    # Some parameters are made with legacy constructors that ignore the device context.
    unet = pipe.unet.to("meta", dtype=torch.float16)
    vae = pipe.vae.to("meta", dtype=torch.float16)
    cache = FeatureCache(unet)
    with torch.device("meta"):
        sample = torch.empty(2, FRAMES, 8, height // 8, width // 8, dtype=torch.float16)
        embeddings = torch.empty(2, 1, 1024, dtype=torch.float16)
        time_ids = torch.empty(2, 3, dtype=torch.float16)
        timestep = torch.tensor(1.0)
        latents = torch.empty(DECODE_CHUNK, 4, height // 8, width // 8, dtype=torch.float16)

    def unet_call() -> None:
        unet(sample, timestep, embeddings, time_ids)

    cache.start(2, steps=2)
    whole = count_flops(unet_call)
    cache.step_done(0)
    reused = count_flops(unet_call)
    cache.stop()
    chunk = count_flops(lambda: vae.decode(latents, num_frames=DECODE_CHUNK))
    decode = chunk * FRAMES / DECODE_CHUNK
    best = STEPS * whole + decode
    rows = []
    for interval in range(1, 6):
        full_steps = math.ceil(STEPS / interval)
        total = full_steps * whole + (STEPS - full_steps) * reused + decode
        rows.append(
            {
                "interval": interval,
                "full_steps": full_steps,
                "clip_pflop": round(total / 1e15, 3),
                "predicted_speedup": round(best / total, 2),
            }
        )
    return {
        "resolution": f"{width}x{height}",
        "unet_whole_tflop": round(whole / 1e12, 1),
        "unet_reused_tflop": round(reused / 1e12, 1),
        "decode_tflop": round(decode / 1e12, 1),
        "intervals": rows,
    }


def flops_table(result: dict[str, Any]) -> str:
    lines = [
        f"UNet call (guided, {FRAMES} frames, {result['resolution']}): "
        f"{result['unet_whole_tflop']} TFLOP whole, {result['unet_reused_tflop']} TFLOP reused; "
        f"VAE decode {result['decode_tflop']} TFLOP",
        "| cache interval | whole UNet steps of 25 | PFLOP per clip | predicted speed-up |",
        "|---|---|---|---|",
    ]
    for row in result["intervals"]:
        lines.append(
            f"| {row['interval']} | {row['full_steps']} | {row['clip_pflop']} "
            f"| {row['predicted_speedup']:.2f}x |"
        )
    return "\n".join(lines)


# --- measured: seconds and difference --------------------------------------------------------


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def run_measured(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here; use --flops, or --gpu --arch tiny --device cpu")
    build_device = device if device.startswith("cuda") else "cpu"
    master = build_svd_xt(build_device) if args.arch == "xt" else build_tiny_pipeline()
    master.to("cpu", dtype=torch.float16 if device.startswith("cuda") else torch.float32)
    free_memory(device)
    engine = SVDEngine(
        [MODEL],
        device=device,
        memory_mode=args.plan,
        resolution=args.resolution,
        plan_settings=PlanSettings(compile_mode=args.compile_mode),
        loader=CopyLoader(master),
    )
    started = time.perf_counter()
    engine.load()
    load_seconds = time.perf_counter() - started
    sync = synchronizer(device)
    width, height = target_size(16, 9, args.resolution)
    intervals = [1, *args.intervals]
    seconds: dict[int, list[float]] = {i: [] for i in intervals}
    differences: dict[int, list[tuple[float, float]]] = {i: [] for i in intervals[1:]}
    for index in range(args.warmup + args.repeats):
        image = picture(width, height, seed=index)
        frames: dict[int, np.ndarray] = {}
        for interval in intervals:
            options = AnimateOptions(
                num_inference_steps=args.steps, seed=2000 + index, cache_interval=interval
            )
            sync()
            clock = time.perf_counter()
            result = engine.run(image, options, lambda _p: None, lambda: False)
            sync()
            if index >= args.warmup:
                seconds[interval].append(time.perf_counter() - clock)
            frames[interval] = result.frames
        for interval in intervals[1:]:
            mean_abs = float(np.mean(np.abs(frames[interval].astype(int) - frames[1].astype(int))))
            differences[interval].append((mean_abs, psnr(frames[interval], frames[1])))
    plan = engine.plan_for(None)
    engine.close()
    best = statistics.median(seconds[1])
    rows = []
    for interval in intervals:
        median = statistics.median(seconds[interval])
        diffs = differences.get(interval, [])
        rows.append(
            {
                "quality": "best" if interval == 1 else f"draft, interval {interval}",
                "median_seconds": round(median, 3),
                "speedup": round(best / median, 2),
                "mean_abs_difference": round(statistics.mean(d[0] for d in diffs), 2)
                if diffs
                else None,
                "psnr_db": round(statistics.mean(d[1] for d in diffs), 1) if diffs else None,
            }
        )
    return {
        "machine": machine(device),
        "args": vars(args),
        "plan": plan,
        "load_seconds": round(load_seconds, 1),
        "rows": rows,
    }


def measured_table(result: dict[str, Any]) -> str:
    lines = [
        f"plan {result['plan']}, loaded (and warmed up) in {result['load_seconds']} s",
        "| quality | s/clip (median) | vs best | mean abs. difference (0-255) | PSNR dB |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        diff = row["mean_abs_difference"]
        lines.append(
            f"| {row['quality']} | {row['median_seconds']:.2f} | {row['speedup']:.2f}x "
            f"| {'-' if diff is None else diff} | {row['psnr_db'] or '-'} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.draft", description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--flops", action="store_true", help="FLOP counts on the meta device")
    mode.add_argument("--gpu", action="store_true", help="time best against draft quality")
    parser.add_argument("--device", default="cuda", help="--gpu only (cpu for a smoke test)")
    parser.add_argument("--arch", choices=("xt", "tiny"), default="xt", help="--gpu only")
    parser.add_argument("--plan", choices=GPU_PLANS, default="fast")
    parser.add_argument("--compile-mode", default=PlanSettings().compile_mode)
    parser.add_argument(
        "--intervals",
        type=lambda s: [int(p) for p in s.split(",") if p.strip()],
        default=[2, 3],
        help="draft cache intervals to time beside best quality (default 2,3)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--resolution", type=int, default=None, help="1024 (xt), 256 (tiny)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: none)")
    args = parser.parse_args(argv)
    if args.resolution is None:
        args.resolution = 256 if args.arch == "tiny" else 1024
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    if args.flops:
        result = flops(args.resolution)
        print(flops_table(result))
    else:
        result = run_measured(args)
        print(measured_table(result))
    write(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
