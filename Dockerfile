# procos-worker container image.
#
# Stage 1 installs the pinned, hash-checked runtime dependencies (requirements.lock, made by
# scripts/lock from pyproject.toml) into a virtual environment, then the worker itself on top
# (built with the pinned setuptools of requirements-build.lock). Stage 2 copies only that environment
# onto a fresh image and runs as an unprivileged user. No configuration and no secret is baked in:
# every setting comes from the environment at run time (see .env.example and docker-compose.yml).
#
# BASE_IMAGE: both stages use it, so the venv's python symlink is valid in stage 2. The default is the
# pinned public image; tests/container builds the same file on a local Debian 12 (python3 3.11) image.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

FROM ${BASE_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Dependencies first: this layer is rebuilt only when a lock file changes, not on every source edit.
# --require-hashes: every file pip installs must match a hash in the lock; --only-binary: wheels only.
COPY requirements.lock requirements-build.lock ./
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --only-binary :all: --no-deps -r requirements.lock \
    && python3 -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes --only-binary :all: --no-deps -r requirements-build.lock

# The build context is filtered by .dockerignore (an allowlist), so nothing from a developer's tree
# (.env, .venv, .git) can slip in.
COPY pyproject.toml README.md ./
COPY sql/ sql/
COPY procos_worker/ procos_worker/
# The worker's own wheel, built with the pinned setuptools (no build isolation: nothing unpinned is
# fetched), installed without dependencies: they all came from the lock above.
RUN /opt/build/bin/pip wheel --no-build-isolation --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install --no-index --no-deps /wheels/procos_worker-*.whl \
    && /opt/venv/bin/pip check


FROM ${BASE_IMAGE} AS runtime

LABEL org.opencontainers.image.title="procos-worker" \
      org.opencontainers.image.description="Camunda 7 external-task worker: asks Ollama, stores every prompt and answer in PostgreSQL" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN groupadd --system --gid 10001 procos \
    && useradd --system --uid 10001 --gid procos --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin procos

COPY --from=build /opt/venv /opt/venv

# sql/init-db.sql travels inside the wheel (procos_worker/store/sql/init-db.sql), so
# `docker compose run --rm init-db` can apply it and the migrations from the container.
WORKDIR /app

USER 10001:10001

# The worker serves /metrics, /healthz and /readyz on OPS_HTTP_PORT (9464). It listens on the
# loopback interface unless OPS_HTTP_HOST says otherwise (compose sets 0.0.0.0 so Prometheus reaches
# every replica; do the same under other orchestrators).
EXPOSE 9464

# `procos-worker health` asks the worker's /healthz: 0 only while its poll loop and heartbeat made
# progress within OPS_LIVENESS_MAX_S (with OPS_HTTP_PORT=0 it reads WORKER_HEALTH_FILE instead).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["procos-worker", "health"]

# The worker stops gracefully on SIGTERM (finishing or releasing in-flight tasks within
# WORKER_SHUTDOWN_GRACE_S); give it a stop timeout above that (compose: stop_grace_period).
STOPSIGNAL SIGTERM
CMD ["procos-worker", "run"]
