# cardiofm-coordinator: the federation's central side, deployed by the cardiofm-coordinator chart.
# `cardiofm coordinator serve` runs in the foreground: it applies the settings file, installs the TLS files,
# starts the Flower SuperLink (127.0.0.1 only) and Debian's nginx as the allowlisting proxy (the one public
# port, 9443 by default), registers the listed sites, and stays up until SIGTERM.
#
#   docker build -f docker/coordinator.Dockerfile -t <registry>/cardiofm-coordinator:<version> .
#
# Build context: the repository root (see the root .dockerignore).
#
# torch is needed: the ServerApp (cardiofm.federated.server_app, run by the SuperLink in this container)
# imports torch and builds the model with MONAI to start each run and to write the round checkpoints. The
# coordinator only aggregates, on CPU, so torch is PyTorch's CPU wheel (same version as the train extra,
# without the CUDA libraries); the pip install of ".[train,federated]" keeps it, since 2.13.0+cpu satisfies
# the extra's torch==2.13.0.

FROM python:3.11.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
WORKDIR /src
RUN /opt/venv/bin/pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu
COPY pyproject.toml README.md ./
COPY cardiofm ./cardiofm
RUN /opt/venv/bin/pip install --no-cache-dir ".[train,federated]" \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0') and not torch.version.cuda"

FROM python:3.11.11-slim-bookworm

# one label per line: Kaapana's build tooling reads `LABEL IMAGE=` lines as plain text
LABEL IMAGE="cardiofm-coordinator"
LABEL VERSION="0.1.0"
LABEL BUILD_IGNORE="False"
LABEL org.opencontainers.image.title="cardiofm-coordinator" \
      org.opencontainers.image.description="cardiofm federation coordinator: Flower SuperLink, ServerApp and allowlisting nginx proxy" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH="/opt/venv/bin:${PATH}" \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1

# nginx runs unprivileged with its own prefix under /state (config, pid file, logs, temp folders)
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 cardiofm \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/cardiofm --shell /usr/sbin/nologin cardiofm \
    && mkdir -p /kaapana/app /state /etc/cardiofm \
    && chown 10001:10001 /kaapana/app /state

COPY --from=build /opt/venv /opt/venv
RUN cardiofm --version && cardiofm coordinator serve --help > /dev/null

WORKDIR /kaapana/app
USER 10001
EXPOSE 9443
VOLUME ["/state"]

ENTRYPOINT ["cardiofm", "coordinator", "serve"]
CMD ["--dir", "/state"]
