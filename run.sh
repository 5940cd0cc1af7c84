#!/usr/bin/env bash
# Set up a virtual environment and run the bot (`python -m bot`); arguments go to the bot,
# e.g. `./run.sh check`, `./run.sh sync --guild 123`. `--setup-only` installs and stops.
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# Install only when pyproject.toml changed since the last install, so a restart needs no network.
stamp=.venv/.svd-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q -e .
  echo "$want" > "$stamp"
fi
if [ "${1:-}" = "--setup-only" ]; then exit 0; fi
exec .venv/bin/python -m bot "$@"
