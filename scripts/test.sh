#!/usr/bin/env bash
# The test command: set up (idempotent), lint, then every test, integration tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
ruff check .
exec python -m pytest -q -p no:cacheprovider "$@"
