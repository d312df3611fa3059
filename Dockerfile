# balance ETL: `etl daemon` in a container. Build: docker build -t balance-etl .
# Stage 1 builds the wheel (which carries the migrations); stage 2 installs only the wheel.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY etl ./etl
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM python:3.11-slim
# The daemon's own user; its data dir (spool, embedded PostgreSQL if no database is set) is a volume.
RUN groupadd --system --gid 10001 etl \
    && useradd --system --uid 10001 --gid etl --create-home --home-dir /var/lib/etl etl
COPY --from=build /dist/*.whl /tmp/
RUN pip install --no-cache-dir /tmp/*.whl && rm /tmp/*.whl
ENV ETL_DATA_DIR=/var/lib/etl \
    ETL_CONFIG=/etc/etl/etl.toml \
    ETL_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/etl
VOLUME ["/var/lib/etl"]
EXPOSE 9464
# The metrics endpoint answers while the daemon's event loop runs (slim has no curl).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/metrics', timeout=4)"]
STOPSIGNAL SIGTERM
CMD ["etl", "daemon", "--metrics-port", "9464"]
