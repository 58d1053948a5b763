#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian 12 machine: system packages the integration tests use
# (mosquitto, prometheus + promtool, systemd-analyze, iproute2 for the test workers' loopbacks,
# etcd-server + etcd-client for [cluster]) and a virtualenv with curtaild in it.
# Usage: scripts/setup.sh [--python-only]
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" != "--python-only" ]]; then
  need=()
  command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]] || need+=(mosquitto)
  command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
  command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
  command -v snmpget >/dev/null 2>&1 || need+=(snmp)  # net-snmp CLI: the PDU tests' real client
  command -v ip >/dev/null 2>&1 || need+=(iproute2)  # a loopback per parallel test worker
  command -v etcd >/dev/null 2>&1 || need+=(etcd-server)  # [cluster]: leader lease, shared state
  command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)  # docs/cluster.md; test clusters
  if ((${#need[@]})); then
    if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
    echo "setup: installing ${need[*]} with apt-get" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # The packages start their own services on install; tests start private instances.
    for svc in mosquitto prometheus etcd; do
      (command -v systemctl >/dev/null && $SUDO systemctl stop "$svc" 2>/dev/null) || true
      $SUDO pkill -x "$svc" 2>/dev/null || true
    done
  fi
fi

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
