# Encoder Heist victim API. Build: docker build -t encoder-heist .   (CPU torch from uv.lock)
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir "uv>=0.13" \
 && useradd --create-home --uid 10001 heist
WORKDIR /app
# dependencies first (cached layer), then the code
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY shared ./shared
COPY server ./server
COPY attacker ./attacker
COPY defender ./defender
COPY testbed ./testbed
RUN uv sync --frozen --no-dev
USER heist
EXPOSE 8000
# secrets (HEIST_ADMIN_TOKEN, HEIST_SERVER_SECRET) come from the environment at run time, never the image
ENV HEIST_HOST=0.0.0.0 HEIST_PORT=8000 HEIST_CHECKPOINT=/checkpoints/victim HEIST_DATA_DIR=/data
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=5 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=3).status == 200 else 1)"]
CMD ["heist-server", "serve"]
