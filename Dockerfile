# procos-worker container image.
#
# Stage 1 builds the worker's wheel and the wheel of every dependency, then installs them into a
# virtual environment. Stage 2 copies only that environment onto a fresh slim image and runs as an
# unprivileged user. No configuration and no secret is baked in: every setting comes from the
# environment at run time (see .env.example and docker-compose.yml).
#
# Both stages use the same pinned base image, so the venv's python symlink is valid in stage 2.

FROM python:3.11.14-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# The build context is filtered by .dockerignore down to pyproject.toml, README.md, procos_worker/
# and sql/ (an allowlist), so nothing from a developer's tree (.env, .venv, .git) can slip in.
COPY . .

# Wheels for the worker and all its dependencies, then an isolated venv installed from them only.
RUN pip wheel --wheel-dir /wheels . \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --find-links=/wheels /wheels/procos_worker-*.whl


FROM python:3.11.14-slim-bookworm AS runtime

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
# `docker compose run --rm worker procos-worker init-db` can re-apply it from the container.
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
