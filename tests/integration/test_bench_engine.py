"""`bench/engine.py --gpu`, the script a lent GPU's few minutes go to, run end to end on the CPU
with the tiny model: a bug of ours must show up here, not there. Its figures mean nothing on a
CPU; what it checks does: the fast plan computes the same function and never recompiles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def bench(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.engine",
            "--gpu",
            "--arch=tiny",
            "--device=cpu",
            "--repeats=1",
            "--warmup=0",
            "--steps=2",
            f"--out={out}",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_gpu_benchmark_runs_through_on_the_tiny_model(tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    # dynamo's capture and guards, as on the GPU, without minutes of C++ compiling.
    # --warm=landscape, as the GPU session runs it (the engine's tests warm both orientations).
    done = bench(
        out,
        "--compile-backend=eager",
        "--plans=seed,fast",
        "--draft-interval=3",
        "--warm=landscape",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {row["name"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"seed", "fast", "fast draft/3"}
    fast = rows["fast"]
    assert fast["recompiles"] == 0 and rows["fast draft/3"]["recompiles"] == 0
    assert fast["unet_relative_error"] < 1e-3 and fast["vae_relative_error"] < 1e-3
    # Issue 8's "same output": the fast plan's clips are the seed recipe's (same picture, seed
    # and motion), to well under a level of 255.
    assert fast["seed_recipe_gap"] is not None and fast["seed_recipe_gap"] < 0.5
    # And against float32 eager, the higher-precision reference, on inputs drawn for this run.
    errors = fast["fp32_errors"]
    assert set(errors) == {"unet fast", "unet fp16 eager", "vae fast", "vae fp16 eager"}
    assert all(0 <= error < 1e-3 for error in errors.values()), errors
    assert isinstance(fast["check_seed"], int)
    # The agreement check runs the graphs the clips ran, so it compiles nothing of its own.
    assert "compiled" not in fast["note"] and "differ" not in fast["note"], fast["note"]
    assert fast["compile_seconds"] > 0 and len(fast["clip_seconds"]) == 1
    assert "landscape only" in fast["note"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_fast_plan_that_could_not_compile_fails_the_run_instead_of_passing_as_fast(
    tmp_path: Path,
) -> None:
    # The engine runs a plan whose compile fails as "full": timed under the name "fast", it
    # agreed with itself and passed, the GPU's one run looking like success.
    out = tmp_path / "engine.json"
    done = bench(out, "--compile-backend=no_such_backend", "--plans=fast")
    assert done.returncode == 1 and "fell back" in done.stdout
    (fast,) = json.loads(out.read_text())["rows"]
    assert fast["name"] == "fast" and fast["fell_back_to"] == "full"


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("fault", "says"),
    [
        # The engine refuses the full plan's draft interval: after its own row was done.
        ("--draft-interval=99", "cache_interval"),
        # ... or the plan's clips' steps: after its load, before its clips (the seed recipe,
        # plain diffusers, takes them).
        ("--steps=51", "num_inference_steps"),
    ],
)
def test_one_plans_failure_keeps_the_other_plans_figures_and_its_own(
    tmp_path: Path, fault: str, says: str
) -> None:
    # A GPU-only failure in one step must not cost the rest of the device time's figures, nor
    # what the failing plan measured before it (on a GPU: the compile time).
    out = tmp_path / "engine.json"
    done = bench(out, "--plans=full,seed", fault)
    assert done.returncode == 1 and "full raised" in done.stdout
    result = json.loads(out.read_text())
    rows = {row["name"]: row for row in result["rows"]}
    assert list(rows) == ["full", "seed"]
    assert rows["full"]["load_seconds"] > 0 and len(rows["seed"]["clip_seconds"]) == 1
    ((error),) = result["errors"]
    assert error["plan"] == "full" and says in error["error"]
    if fault.startswith("--steps"):
        assert "FAILED" in rows["full"]["note"] and rows["full"]["clip_seconds"] == []
