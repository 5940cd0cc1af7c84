#!/usr/bin/env bash
# Set up a virtual environment with the CPU build of torch, then lint, type-check and test.
# Works on a machine where nothing is installed but Python 3.11+; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
# Its own environment, not run.sh's .venv: the CPU torch installed here would otherwise be what
# the bot then runs with on a GPU host (run.sh keeps any torch that satisfies the requirement).
venv=${TEST_VENV:-.venv-test}
recent() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
# A venv with pip: one left without it (python3-venv was missing on Debian/Ubuntu) is made again.
ready() { recent "$1" && "$1" -m pip --version >/dev/null 2>&1; }
if ! ready "$venv/bin/python"; then
  if ! recent "$python"; then
    echo "test.sh: needs Python 3.11 or newer, and $python is" \
      "$("$python" -V 2>&1 || echo "not there"). Install it (e.g. python3.11) and run" \
      "PYTHON=python3.11 ./test.sh" >&2
    exit 1
  fi
  rm -rf "$venv"  # made by an older Python, or without pip, on an earlier try
  "$python" -m venv "$venv"
fi
# The CPU build of torch first (PyPI's Linux torch is the CUDA build, several GB): the wheel pip
# finds on this machine (CI's machines keep one), else PyTorch's CPU index; then its dependencies
# from the usual index. With torch 2.13.0 in place, nothing later pulls the CUDA wheels.
if ! "$venv/bin/python" -m pip install -q --no-index --no-deps torch==2.13.0 2>/dev/null; then
  "$venv/bin/python" -m pip install -q --no-deps torch==2.13.0 \
    --index-url https://download.pytorch.org/whl/cpu
fi
"$venv/bin/python" -m pip install -q torch==2.13.0
"$venv/bin/python" -m pip install -q -e '.[test]'
# The scale-out tests start a real redis-server (Debian's package); install it where we may.
if ! command -v redis-server >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) \
        >/dev/null \
        || echo "test.sh: could not install redis-server; the scale-out tests will be skipped" >&2
fi
"$venv/bin/ruff" check .
"$venv/bin/mypy"
"$venv/bin/python" -m pytest "$@"
