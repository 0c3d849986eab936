# cardiofm-trainer: CUDA torch + MONAI + Flower. Kaapana runs the steps site-join (the site's Flower
# SuperNode, which runs the ClientApp's training rounds), site-pseudolabel, train-local, predict and measure
# (its report.png needs the report extra) in it, named by $CARDIOFM_STEP.
#
#   docker build -f docker/trainer.Dockerfile -t <registry>/cardiofm-trainer:<version> .
#
# Build context: the repository root (see the root .dockerignore).
#
# torch==2.13.0 from PyPI is the CUDA build on Linux x86_64: CUDA 13.0 (its cuda-toolkit==13.0.3 and
# nvidia-*-cu13 wheels, cuDNN included), so the base is NVIDIA's CUDA 13.0 runtime image (no second cuDNN): its
# NVIDIA_REQUIRE_CUDA=cuda>=13.0 makes the container runtime refuse a host driver too old for those wheels
# (CUDA 13 needs driver >= 580) instead of torch failing later. Python 3.12 is Ubuntu 24.04's own.

FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04 AS build

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3.12 -m venv /opt/venv
WORKDIR /src
# torch on its own layer (several GB, changes rarely); the same pin as the train extra
RUN /opt/venv/bin/pip install --no-cache-dir torch==2.13.0
COPY pyproject.toml README.md ./
COPY cardiofm ./cardiofm
RUN /opt/venv/bin/pip install --no-cache-dir ".[train,federated,report]" \
    && /opt/venv/bin/pip check

FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04

# one label per line: Kaapana's build tooling reads `LABEL IMAGE=` lines as plain text
LABEL IMAGE="cardiofm-trainer"
LABEL VERSION="0.1.0"
LABEL BUILD_IGNORE="False"
LABEL org.opencontainers.image.title="cardiofm-trainer" \
      org.opencontainers.image.description="cardiofm site training: Flower SuperNode (site-join) and pseudo-labelling (site-pseudolabel)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH="/opt/venv/bin:${PATH}" \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 cardiofm \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/cardiofm --shell /usr/sbin/nologin cardiofm \
    && mkdir -p /kaapana/app /kaapana/mounted/data /models \
    && chown 10001:10001 /kaapana/app /kaapana/mounted/data

COPY --from=build /opt/venv /opt/venv
RUN cardiofm --version

WORKDIR /kaapana/app
USER 10001

ENTRYPOINT ["cardiofm", "step"]
