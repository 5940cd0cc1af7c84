#!/usr/bin/env bash
# Set up a virtual environment and run the bot (`python -m bot`); arguments go to the bot,
# e.g. `./run.sh check`, `./run.sh sync --guild 123`. `--setup-only` installs and stops.
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
recent() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
# A venv with pip: one left without it (python3-venv was missing on Debian/Ubuntu) is made again.
ready() { recent "$1" && "$1" -m pip --version >/dev/null 2>&1; }
if ! ready .venv/bin/python; then
  if ! recent "$python"; then
    echo "run.sh: the bot needs Python 3.11 or newer, and $python is" \
      "$("$python" -V 2>&1 || echo "not there"). Install it (e.g. python3.11) and run" \
      "PYTHON=python3.11 ./run.sh" >&2
    exit 1
  fi
  rm -rf .venv  # made by an older Python, or without pip, on an earlier try
  "$python" -m venv .venv
fi
# Install only when pyproject.toml changed since the last install, so a restart needs no network.
stamp=.venv/.svd-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q -e .
  echo "$want" > "$stamp"
fi
if [ "${1:-}" = "--setup-only" ]; then exit 0; fi
exec .venv/bin/python -m bot "$@"
