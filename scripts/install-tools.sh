#!/usr/bin/env bash
# Installs the non-Python tools the test suite drives into .tools/ (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .tools/bin

# --- promtool (checks the /metrics exposition in tests) ----------------------------------
# From Debian's prometheus package: only the promtool binary is unpacked into .tools/bin;
# the package is not installed, so no service is set up or started.
install_promtool() {
    if [ -x .tools/bin/promtool ] && .tools/bin/promtool --version >/dev/null 2>&1; then
        return 0
    fi
    if command -v promtool >/dev/null 2>&1; then
        ln -sf "$(command -v promtool)" .tools/bin/promtool
        return 0
    fi
    local tmp
    tmp="$(mktemp -d)"
    (
        cd "$tmp"
        if ! apt-get download prometheus >/dev/null 2>&1; then
            apt-get update -qq >/dev/null
            apt-get download prometheus >/dev/null
        fi
        dpkg-deb -x prometheus_*.deb root
    ) 2>/dev/null
    install -m 0755 "$tmp/root/usr/bin/promtool" .tools/bin/promtool
    rm -rf "$tmp"
    echo "installed .tools/bin/promtool ($(.tools/bin/promtool --version 2>&1 | head -1))"
}
install_promtool
