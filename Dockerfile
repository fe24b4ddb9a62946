# syntax=docker/dockerfile:1
# llamawool: one image, one process (`python -m llamawool serve`).
#
# Stage 1 installs the package and its pinned dependencies (constraints.txt is
# the lock file) into a virtualenv; stage 2 copies only that virtualenv and the
# game config onto a fresh slim base, so no compiler, pip cache or build tool
# reaches the final image. Every dependency ships a manylinux wheel for amd64
# and arm64, so neither stage needs a compiler.
#
# Runs as uid/gid 1001 with a read-only root filesystem: the only writable
# paths are LLAMAWOOL_DATA_DIR (/data) and /tmp, which the orchestrator mounts
# (emptyDir in Kubernetes, volumes/tmpfs in docker-compose).
#
# BASE_IMAGE is any Debian-family image with CPython 3.11 and its venv module
# as `python3`: the official python:3.11-slim-trixie by default; where no
# registry can be reached, a local one (tests/image_base.py builds a Debian
# bookworm base with debootstrap). Both stages use the same base, so the
# virtualenv's interpreter link stays valid.
# checkov reads `FROM ${BASE_IMAGE}` as an image without a tag (CKV_DOCKER_7);
# the default is a pinned tag, which tests/deploy/test_validators.py holds it to.
# checkov:skip=CKV_DOCKER_7:the base is a build argument whose default is pinned
ARG BASE_IMAGE=python:3.11-slim-trixie

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml constraints.txt ./
COPY llamawool ./llamawool
# pip compiles the bytecode at install time (the read-only image never writes any);
# the virtualenv's own pip and setuptools go once they have done their job.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt . \
    && /opt/venv/bin/pip uninstall --yes pip setuptools

FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="llamawool" \
      org.opencontainers.image.description="Server-authoritative game server for Llama Wool Farm" \
      org.opencontainers.image.licenses="MIT"
# The virtualenv comes first on PATH: its `python` runs the CMD and the HEALTHCHECK
# on either base (Debian's own python3 package installs no `python`).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LLAMAWOOL_ENV=production \
    LLAMAWOOL_HOST=0.0.0.0 \
    LLAMAWOOL_PORT=3000 \
    LLAMAWOOL_DATA_DIR=/data \
    LLAMAWOOL_CONFIG_DIR=/app/config
RUN groupadd --system --gid 1001 llamawool \
    && useradd --system --uid 1001 --gid 1001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin llamawool \
    && mkdir -p /data \
    && chown 1001:1001 /data
COPY --from=build /opt/venv /opt/venv
COPY config /app/config
WORKDIR /app
USER 1001:1001
EXPOSE 3000
VOLUME ["/data"]
# Liveness through the stdlib: the image carries no curl or wget.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('PORT') or os.environ.get('LLAMAWOOL_PORT', '3000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "llamawool", "serve"]
