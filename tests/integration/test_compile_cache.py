"""The fast plan's compile cache (COMPILE_CACHE_DIR): a restart loads inductor's compiled
kernels from the folder instead of compiling them again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from generation.placement import use_compile_cache

ROOT = Path(__file__).resolve().parents[2]

# One process start: inductor compiles a small model with the cache in argv[1], as the fast
# plan's warm-up does, and reports what it loaded and what it compiled.
START = """
import json, sys
from pathlib import Path
import torch
from generation.placement import compile_cache_counts, use_compile_cache


class Block(torch.nn.Module):  # our own class: dynamo does not trace torch.nn's own forwards
    def __init__(self) -> None:
        super().__init__()
        self.inner, self.outer = torch.nn.Linear(16, 16), torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(torch.nn.functional.gelu(self.inner(x)))


assert use_compile_cache(Path(sys.argv[1]))
model = Block()
model.compile(backend="inductor", dynamic=False)
with torch.no_grad():
    model(torch.randn(3, 16))
print(json.dumps(compile_cache_counts()))
"""


def _start(cache: Path) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHINDUCTOR_", "TRITON_"))}
    done = subprocess.run(
        [sys.executable, "-c", START, str(cache)],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    counts: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return counts


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_restart_loads_the_kernels_the_first_start_compiled(tmp_path: Path) -> None:
    cache = tmp_path / "data" / "compile-cache"
    first = _start(cache)
    assert first["misses"] >= 1 and first["hits"] == 0
    assert any(cache.iterdir())  # on the volume, not in a temporary folder
    again = _start(cache)
    assert again == {"hits": first["misses"], "misses": 0}


def test_an_unwritable_cache_folder_is_skipped_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert not use_compile_cache(blocker / "compile-cache")
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ  # torch keeps its own default
