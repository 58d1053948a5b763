#!/usr/bin/env bash
# The test command: set up (idempotent), lint, check the import contracts and types
# (scripts/typecheck.sh), then every test, integration tests included.
#
# Integration tests mostly wait (on emulated firmware delays, ticks, brokers), so the suite
# runs in parallel pytest-xdist workers, each in a network namespace of its own
# (tests/support/netns-python): every test file keeps its fixed 127.x.y.z addresses and
# well-known ports without ever meeting another file's. CURTAILD_TEST_WORKERS sets how many
# (default 4; 0 = one process, no namespaces). Where namespaces cannot be made (not root,
# no iproute2) the suite runs in one process, as before.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
ruff check .
scripts/typecheck.sh

workers="${CURTAILD_TEST_WORKERS:-4}"
parallel=()
for arg in "$@"; do
  case "$arg" in -n|-n*|--numprocesses*|--tx*|-p) workers=0 ;; esac  # caller chose
done
if [[ "$workers" != 0 ]]; then
  if unshare --net -- sh -c 'ip link set lo up' 2>/dev/null; then
    parallel=(--tx "${workers}*popen//python=tests/support/netns-python" --dist loadfile)
  else
    echo "test: cannot make network namespaces (needs root and iproute2): one process" >&2
  fi
fi
exec python -m pytest -q -p no:cacheprovider "${parallel[@]}" "$@"
