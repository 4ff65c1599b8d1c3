# syntax=docker/dockerfile:1.7
# bwp image: every bwp process (worker, simulator, recorder, retrain cron, topic init)
# runs from it; the compose services differ only in their command.
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm

# --- builder: build the wheel and install it (with its dependencies) into a venv -------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/bwp && /opt/bwp/bin/pip install --upgrade "pip>=24" "wheel>=0.43"
# Sources only (see .dockerignore): no models, data, venv or git history in the image.
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY ml ./ml
COPY simulator ./simulator
RUN /opt/bwp/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/bwp/bin/pip install /wheels/bwp-*.whl \
 && /opt/bwp/bin/bwp --help > /dev/null

# --- runtime -------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# busybox-static provides crond for the retrain schedule (Debian's plain `busybox` lacks
# the applet; docs/operations.md says why not Debian's cron). Upstream version pinned,
# Debian revision left open so security rebuilds still install.
RUN apt-get update \
 && apt-get install -y --no-install-recommends "busybox-static=1:1.35.0-4*" \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s /bin/busybox /usr/local/bin/crond \
 && groupadd --system --gid 10001 bwp \
 && useradd --system --uid 10001 --gid bwp --home-dir /home/bwp --create-home --shell /usr/sbin/nologin bwp \
 && mkdir -p /models /data/recordings /var/lib/bwp /etc/crontabs \
 && chown bwp:bwp /models /data /data/recordings /var/lib/bwp
COPY --from=builder /opt/bwp /opt/bwp
ENV PATH=/opt/bwp/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    BWP_MODEL_DIR=/models \
    BWP_STATE_DIR=/var/lib/bwp \
    BWP_EMBEDDED=never
USER bwp
WORKDIR /home/bwp
# The worker's /metrics (BWP_METRICS_PORT).
EXPOSE 9464
# Default probe for every bwp service: the brokers answer (the worker overrides it with
# its /metrics endpoint in docker-compose.yml).
HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "stream.ops.healthcheck", "--timeout", "5", "kafka"]
ENTRYPOINT ["bwp"]
CMD ["--help"]
