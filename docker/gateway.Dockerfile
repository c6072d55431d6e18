# syntax=docker/dockerfile:1
# The demo gateway of compose.yaml: clients/python/gateway.py, an OpenAI-compatible
# /v1/chat/completions through LiteLLM with semcache as its cache. Build from the repository root:
#
#   docker build -f docker/gateway.Dockerfile -t semcache-gateway .
FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10002 gateway \
 && useradd --system --uid 10002 --gid gateway --no-create-home --shell /usr/sbin/nologin gateway
WORKDIR /app/clients/python
COPY clients/python/requirements.txt ./
RUN --mount=type=cache,target=/root/.cache/pip pip install --disable-pip-version-check -r requirements.txt
COPY proto /app/proto
COPY clients/python/*.py clients/python/generate.sh ./
# Stubs generated at build time, so the image never writes into /app.
RUN ./generate.sh python3
ENV SEMCACHE_ADDR=semcache:50051 \
    GATEWAY_LISTEN=0.0.0.0:4000 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    PYTHONUNBUFFERED=1
USER gateway:gateway
EXPOSE 4000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:4000/health', timeout=2).status != 200)"]
CMD ["python3", "gateway.py"]
