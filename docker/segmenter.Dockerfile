# cardiofm-segmenter: TotalSegmentator's environment (requirements/segmenter.txt, every package pinned) plus
# the cardiofm package. Kaapana runs the crop-heart step in it ($CARDIOFM_STEP=crop-heart).
#
# Weights are never downloaded, neither at build time nor at run time: Kaapana mounts its models volume at
# /models, and the TotalSegmentator v2 dataset folders (Dataset297_..., Dataset298_...) must be provisioned
# under /models/total_segmentator_v2 beforehand (see docker/README.md).
#
#   docker build -f docker/segmenter.Dockerfile -t <registry>/cardiofm-segmenter:<version> .
#
# Build context: the repository root (see the root .dockerignore).

FROM python:3.11.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
WORKDIR /src
# the TotalSegmentator environment first (its own layer: large, and it changes rarely). On Linux x86_64,
# torch==2.13.0 from PyPI is the CUDA 13.0 build with its own CUDA libraries (host driver >= 580), so the
# base needs none; crop-heart gets a GPU in Kaapana.
COPY requirements/segmenter.txt requirements/segmenter.txt
RUN /opt/venv/bin/pip install --no-cache-dir -r requirements/segmenter.txt
COPY pyproject.toml README.md ./
COPY cardiofm ./cardiofm
# cardiofm resolved together with the same pinned file: nothing in it changes, and cardiofm's core
# dependencies the file lacks (the DICOM ones: dicomweb-client, pynetdicom, highdicom, pylibjpeg; the step
# command imports them) are added at their pyproject pins. `--no-deps .` would leave `cardiofm step` unable
# to start.
RUN /opt/venv/bin/pip install --no-cache-dir -r requirements/segmenter.txt . \
    && /opt/venv/bin/pip check

FROM python:3.11.11-slim-bookworm

# one label per line: Kaapana's build tooling reads `LABEL IMAGE=` lines as plain text
LABEL IMAGE="cardiofm-segmenter"
LABEL VERSION="0.1.0"
LABEL BUILD_IGNORE="False"
LABEL org.opencontainers.image.title="cardiofm-segmenter" \
      org.opencontainers.image.description="cardiofm crop-heart step: TotalSegmentator heart crop (weights mounted under /models)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"

# TOTALSEG_HOME_DIR only holds TotalSegmentator's config.json (usage statistics off); /tmp stays writable
# whatever uid the pod runs as.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH="/opt/venv/bin:${PATH}" \
    TOTALSEG_WEIGHTS_PATH=/models/total_segmentator_v2 \
    TOTALSEG_HOME_DIR=/tmp/totalsegmentator \
    MPLCONFIGDIR=/tmp/matplotlib \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

RUN groupadd --gid 10001 cardiofm \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/cardiofm --shell /usr/sbin/nologin cardiofm \
    && mkdir -p /kaapana/app /kaapana/mounted/data /models \
    && chown 10001:10001 /kaapana/app /kaapana/mounted/data

COPY --from=build /opt/venv /opt/venv
RUN cardiofm --version

WORKDIR /kaapana/app
USER 10001

ENTRYPOINT ["cardiofm", "step"]
