#!/usr/bin/env bash
# Set up a virtual environment with the CPU build of torch, then lint, type-check and test.
# Works on a machine where nothing is installed but Python 3.11+; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
# Its own environment, not run.sh's .venv: the CPU torch installed here would otherwise be what
# the bot then runs with on a GPU host (run.sh keeps any torch that satisfies the requirement).
venv=${TEST_VENV:-.venv-test}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# The CPU build first: with torch 2.13.0 already present, nothing pulls the CUDA wheels.
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
