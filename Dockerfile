# aoai-gateway: the same steps as the README's "Running it" section.
#   docker build -t aoai-gateway .
#   docker run -p 8000:8000 -v "$PWD/config:/app/config:ro" --env-file config/gateway.env aoai-gateway
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Dependencies at the exact versions (and hashes) of requirements.lock, in their own
# layer; then the gateway itself with --no-deps, so nothing else is resolved at build.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install . --no-deps \
 && rm -rf /src \
 && useradd --system --uid 10001 --user-group --no-create-home --home-dir /app \
      --shell /usr/sbin/nologin gateway \
 && mkdir -p /app/config /app/data \
 && chown gateway:gateway /app /app/data

# The configuration is mounted at /app/config: `serve` reads config/gateway.yaml
# from its working directory, as in a checkout. Without Redis, usage goes to an
# SQLite file in /app (state.path: /app/data/usage.db puts it on a volume).
WORKDIR /app
USER gateway
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

# docker stop sends SIGTERM: streams in flight get up to --grace seconds to finish.
STOPSIGNAL SIGTERM
CMD ["aoai-gateway", "serve", "--host", "0.0.0.0", "--port", "8000", "--grace", "25"]
