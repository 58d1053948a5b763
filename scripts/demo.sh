#!/usr/bin/env bash
# The demo: an emulated 16-miner fleet on 127.1.0.1-127.1.0.16 and `curtaild run` with the
# shipped config.toml, printing decisions as they happen. Ctrl-C stops both.
# Needs root (the emulated Antminers' web UI listens on port 80, as the real ones do).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --python-only
. .venv/bin/activate
curtaild emulate --count 16 --first-ip 127.1.0.1 --control 127.0.0.1:8640 --time-scale 0.1 &
emu=$!
trap 'kill $emu 2>/dev/null; wait $emu 2>/dev/null' EXIT
for _ in $(seq 1 100); do
  python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8640/health', timeout=1)" 2>/dev/null && break
  kill -0 $emu 2>/dev/null || { echo "demo: the emulator failed to start" >&2; exit 1; }
  sleep 0.2
done
echo "demo: emulator ready; fleet truth at http://127.0.0.1:8640/miners"
curtaild --config config.toml plan
exec_status=0
curtaild --config config.toml run || exec_status=$?
exit $exec_status
