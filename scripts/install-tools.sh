#!/usr/bin/env bash
# Installs the non-Python tools the test suite drives into .tools/ (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .tools/bin
