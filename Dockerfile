# dict-ratelimit: one image for every process of a deployment (Dagster code server, run
# workers, the exporter, the migration Job). Built from the wheel with the pinned constraints;
# runs as an unprivileged user; no embedded servers (PostgreSQL and Pulsar are external).
#   docker build -t dict-ratelimit:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY dict_ratelimit ./dict_ratelimit
# the project's wheel, then every dependency as a wheel, at the versions CI tested
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && pip wheel --no-cache-dir --constraint constraints.txt --wheel-dir /wheels /wheels/dict_ratelimit-*.whl

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="dict-ratelimit" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.description="Watches DICT token buckets through the Bridge and alerts before a 429"
RUN groupadd --system --gid 10001 dict \
 && useradd --system --uid 10001 --gid dict --home-dir /home/dict --create-home --shell /usr/sbin/nologin dict
COPY --from=build /wheels /wheels
COPY constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir --no-index --find-links /wheels --constraint /tmp/constraints.txt \
      "dict-ratelimit==${VERSION}" \
 && rm -rf /wheels /tmp/constraints.txt
USER 10001:10001
WORKDIR /home/dict
ENV PYTHONUNBUFFERED=1 \
    DAGSTER_HOME=/home/dict/dagster \
    DICT_RATELIMIT_EXPORTER_HOST=0.0.0.0 \
    DICT_RATELIMIT_EXPORTER_PORT=9464
EXPOSE 9464
# the exporter answers /metrics (database_up 0 when the database is down: still healthy)
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/metrics', timeout=4)"]
ENTRYPOINT ["dict-ratelimit"]
CMD ["exporter"]
