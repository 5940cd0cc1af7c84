# svd-discord-bot on an NVIDIA CUDA runtime. Build: docker build -t svd-discord-bot .
# Run:   docker compose up -d   (reads .env; reserves one GPU)
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HF_HOME=/cache/huggingface DATA_DIR=/data DATABASE_PATH=/data/bot.sqlite3
# gcc and python3-dev: Triton (torch.compile, the fast plan on a roomy GPU) builds a small C
# module at its first kernel; the runtime image has neither, and without them every clip would
# run uncompiled (the engine falls back to plan "full").
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip python3-dev \
        gcc libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 bot \
    && mkdir -p /app /data/gpu-locks /data/compile-cache /cache/huggingface \
    && chown -R bot:bot /app /data /cache
USER bot
WORKDIR /app

# The same install steps as the README's first command (./run.sh): a venv and `pip install -e .`,
# which on Linux takes PyPI's CUDA build of torch.
COPY --chown=bot:bot pyproject.toml README.md run.sh ./
COPY --chown=bot:bot bot ./bot
COPY --chown=bot:bot generation ./generation
COPY --chown=bot:bot storage ./storage
RUN ./run.sh --setup-only

VOLUME ["/data", "/cache/huggingface"]
HEALTHCHECK --interval=60s --timeout=10s --start-period=15m --retries=3 \
    CMD .venv/bin/python -m bot health
ENTRYPOINT ["./run.sh"]
