#!/usr/bin/env bash
# Architecture and types, as CI checks them (scripts/test.sh calls this):
#   lint-imports  the contracts in .importlinter (layers, a pure core, policies on the core
#                 only, no emulator in the product, each third-party client in its adapter)
#   mypy          strict on the domain core and the policy API third parties write against;
#                 pyproject's settings on the controller, the drivers and the emulator
# The folders install under curtaild.* through setuptools' package-dir; mypy cannot follow
# that import hook, so it reads a tree of links (.build/typecheck/curtaild/<folder>).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
tree=.build/typecheck/curtaild
mkdir -p "$tree"
for d in core controller drivers policies emulator; do ln -sfn "../../../$d" "$tree/$d"; done
lint-imports --no-cache
mypy --strict --no-warn-unused-configs -p curtaild.core -p curtaild.policies  # the overrides are for the rest
mypy -p curtaild.controller -p curtaild.drivers -p curtaild.emulator
