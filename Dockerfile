# streamrec application image: `recsys` (worker, retrain, topics, replay, ...) as a non-root user.
# Used by docker-compose.yml; build with `docker compose build` or `docker build -t streamrec:0.1.0 .`
# The base is pinned to an exact patch release; two stages keep compilers and pip caches out.

FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY recsys ./recsys
COPY streaming ./streaming
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install . \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11.13-slim-bookworm
# libgomp1: OpenMP for implicit's ALS and fold-in. NUMBA_CACHE_DIR: the session-kNN kernels' machine
# code (recsys/candidates/sources/kernels.py), written by a worker's warm-up the first time: the app user can
# write neither /opt/venv nor its home, and without a cache every start compiles them (~3 s of CPU).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 streamrec \
 && useradd --system --uid 10001 --gid streamrec --home-dir /app --no-create-home --shell /usr/sbin/nologin streamrec \
 && mkdir -p /app /models /var/lib/streamrec/worker /var/lib/streamrec/numba \
 && chown streamrec:streamrec /models /var/lib/streamrec /var/lib/streamrec/worker /var/lib/streamrec/numba
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker-entrypoint.sh /app/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STREAMREC_MODEL_DIR=/models \
    STREAMREC_DATA_DIR=/var/lib/streamrec/worker \
    NUMBA_CACHE_DIR=/var/lib/streamrec/numba
WORKDIR /app
USER 10001:10001
# 6066: worker HTTP (recommendations, /ready, /metrics); 9108: retrain metrics
EXPOSE 6066 9108
ENTRYPOINT ["/app/docker-entrypoint.sh"]
CMD ["--help"]
