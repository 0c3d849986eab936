# cardiofm-processing: the light core package (no torch, no extras). Kaapana runs the steps stage-studies,
# select-series, convert, import-labels, build-dataset, prepare-report, and the predict DAG's stage-series,
# export-dicom and send-results in it; the step is named by
# $CARDIOFM_STEP (Kaapana passes no command or arguments to the pod). dcm2niix comes from its pinned wheel.
#
#   docker build -f docker/processing.Dockerfile -t <registry>/cardiofm-processing:<version> .
#
# Build context: the repository root (see the root .dockerignore).

FROM python:3.11.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cardiofm ./cardiofm
# the core dependencies only, each pinned in pyproject.toml; no extras, so no torch
RUN /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"

FROM python:3.11.11-slim-bookworm

# one label per line: Kaapana's build tooling reads `LABEL IMAGE=` lines as plain text
LABEL IMAGE="cardiofm-processing"
LABEL VERSION="0.1.0"
LABEL BUILD_IGNORE="False"
LABEL org.opencontainers.image.title="cardiofm-processing" \
      org.opencontainers.image.description="cardiofm data preparation steps (DICOM staging, series selection, conversion, labels, dataset, report)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH="/opt/venv/bin:${PATH}"

RUN groupadd --gid 10001 cardiofm \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/cardiofm --shell /usr/sbin/nologin cardiofm \
    && mkdir -p /kaapana/app /kaapana/mounted/data /models \
    && chown 10001:10001 /kaapana/app /kaapana/mounted/data

COPY --from=build /opt/venv /opt/venv
RUN cardiofm --version

WORKDIR /kaapana/app
USER 10001

ENTRYPOINT ["cardiofm", "step"]
