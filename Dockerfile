# syntax=docker/dockerfile:1
# The sidecar image. Its entrypoint is `sidecar serve` (the per-pod S3 cache); the Helm chart
# runs the same image as `sidecar inject serve` (the admission webhook).
#
#   docker build -t REGISTRY/sidecar:0.1.0 .
#   docker run --read-only -p 127.0.0.1:9400:9400 REGISTRY/sidecar:0.1.0 --listen 0.0.0.0:9400
#
# The package is installed exactly as the Makefile installs it: a venv at .venv and the
# Makefile's pip command with the same constraints.txt (tests/test_dockerfile.py checks that
# the two lines match). The install is editable, so the layer with the dependencies depends
# only on pyproject.toml and constraints.txt, and a code change rebuilds in seconds.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: venv with the dependencies and the package --------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/sidecar
RUN python -m venv .venv
COPY pyproject.toml constraints.txt README.md ./
# A stand-in package lets the dependencies install (and be cached) before the code is copied.
RUN mkdir sidecar && touch sidecar/__init__.py
RUN .venv/bin/python -m pip install --disable-pip-version-check -q -c constraints.txt -e .
COPY sidecar/ sidecar/
COPY models/predictor.onnx models/predictor.onnx
COPY scripts/healthcheck.py scripts/healthcheck.py
# The root filesystem is read-only at run time: compile bytecode now.
RUN .venv/bin/python -m compileall -q sidecar scripts \
    && .venv/bin/sidecar --help >/dev/null

# --- run: the same base, the venv and source tree, no build tools ----------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="sidecar" \
      org.opencontainers.image.description="Per-pod caching proxy for S3" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 65532 sidecar \
    && useradd --system --uid 65532 --gid 65532 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin sidecar \
    && mkdir -p /var/cache/sidecar \
    && chown 65532:65532 /var/cache/sidecar
COPY --from=build /opt/sidecar /opt/sidecar
# Everything the process writes goes to the two volumes: the chunk cache and /tmp
# (HOME, XDG directories and TMPDIR point there), so the root filesystem can be read-only.
ENV PATH=/opt/sidecar/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    XDG_CONFIG_HOME=/tmp/.config \
    XDG_DATA_HOME=/tmp/.local/share \
    XDG_STATE_HOME=/tmp/.local/state \
    SIDECAR_CACHE_DIR=/var/cache/sidecar \
    SIDECAR_MODEL=/opt/sidecar/models/predictor.onnx
VOLUME ["/var/cache/sidecar", "/tmp"]
USER 65532:65532
WORKDIR /tmp
EXPOSE 9400 9401
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "/opt/sidecar/scripts/healthcheck.py"]
ENTRYPOINT ["sidecar", "serve"]
