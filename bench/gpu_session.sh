#!/usr/bin/env bash
# Issue 8's GPU figures in one device run that fits a 10-minute command (about 9 minutes).
#
#   bash bench/gpu_session.sh wheels     # here, once: what the GPU machine lacks, into .whl/
#   bash bench/gpu_session.sh run        # there: device.run with carry [".whl"], timeout_s 600
#   BUDGET_SECONDS=N bash bench/gpu_session.sh low   # there, if time is left: the low-memory
#                                        # plan; N: the device time left (status) less a minute
#
# The GPU machine has torch, transformers, accelerate, imageio and Pillow, but not diffusers or
# imageio-ffmpeg; `wheels` downloads those (x86-64, Python 3.12) into the git-ignored .whl/.
# `run` measures, most needed first, each step given what is left of BUDGET_SECONDS (540):
#   1. bench.engine --gpu: the seed recipe, then the fast plan (compiled for landscape) and its
#      draft, each plan's failure kept from the others (the run then exits 1): seed
#      first, so the fast plan's process-wide switches (cudnn.benchmark, inductor settings)
#      cannot speed it up; the fast plan's compile time is the unknown, so it may take it all;
#   2. bench.throughput on the full plan (eager; in a new process, the switches are off):
#      clips per hour with and without the encode overlap, and the full plan's seconds per clip;
#      only with 200 s left (build ~25 s + five eager clips of ~30 s), else it would be killed
#      before its sequential half writes.
# bench.engine writes its JSON as figures come in (a row saying "loading (and compiling)" marks a
# compile the timeout stopped; the log has the time per shape), so a stopped run keeps them; a
# fast plan that could not compile is marked "fell back" and fails the run. bench.throughput
# writes its overlapped half before the sequential one.
# Results go to $OUT (the device tool brings them back) or bench/out/. Compiled kernels go to the
# git-ignored .compile-cache/ (a rerun would find them in graphs_from_cache; a session's device time
# rarely leaves room for one: measure the compile cache's gain with bench/compile_cache.py).
set -uo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
wheels)
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
        -d .whl diffusers==0.42.1 imageio-ffmpeg==0.6.0
    ls -la .whl
    ;;
run | low)
    out=${OUT:-bench/out}
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
    # In seconds, not after minutes of building: a diffusers that cannot import here (an older
    # huggingface-hub on the machine) would fail every step.
    python3 -c "import diffusers, imageio_ffmpeg; from diffusers import StableVideoDiffusionPipeline" || exit 1
    nvidia-smi >"$out/nvidia-smi.txt" 2>&1
    ;;&
low)
    # The second run, if the session's device time leaves one (about 3 minutes): the plan under
    # 8 GiB against the full plan, one clip each (the slow plans take no warm-up).
    low_budget=$((${BUDGET_SECONDS:-240} - 20))
    if [ "$low_budget" -lt 60 ]; then
        echo "gpu_session: ${low_budget} s is too little for the low-memory plans" >&2
        exit 2
    fi
    timeout -k 10 "$low_budget" python3 -m bench.engine --gpu \
        --plans full,offload_chunked --repeats 1 --warmup 0 --max-seconds 120 \
        --out "$out/engine-low.json" 2>&1 | tee "$out/engine-low.log"
    exit "${PIPESTATUS[0]}"
    ;;
run)
    budget=${BUDGET_SECONDS:-540}
    started=$SECONDS
    left() { echo $((budget - (SECONDS - started))); }
    # --max-seconds: start no plan after it; the timeout stops a compile that overruns.
    # The fast plan's figures matter most and its compile is the unknown: it may use it all.
    # -k: a process deaf to SIGTERM inside a long CUDA call is killed, and the rest still runs.
    # --warm landscape: the timed clips are landscape, and compiling portrait too would double
    # the warm-up that may not fit (the bot warms both; the CPU tests check portrait's).
    timeout -k 10 $(($(left) - 20)) python3 -m bench.engine --gpu --plans seed,fast \
        --compile-mode default --draft-interval 3 --repeats 2 --max-seconds 200 --warm landscape \
        --compile-cache .compile-cache --out "$out/engine.json" 2>&1 | tee "$out/engine.log"
    status=${PIPESTATUS[0]}  # bench.engine's (1: a check failed or a plan raised), not tee's
    if [ "$(left)" -gt 200 ]; then
        timeout -k 10 $(($(left) - 20)) python3 -m bench.throughput --arch xt --device cuda \
            --plan full --clips 2 --out "$out/throughput.json" 2>&1 | tee "$out/throughput.log"
    else
        echo "gpu_session: $(left) s left, too few for bench.throughput; run it next time"
    fi
    echo "gpu_session: done in $((SECONDS - started)) s; bench.engine exited $status"
    exit "$status"
    ;;
*)
    echo "usage: bash bench/gpu_session.sh wheels|run|low" >&2
    exit 2
    ;;
esac
