# brats-seg container: CPU by default, CUDA through a build argument. No data or weights inside.
#   docker build -t brats-seg .                                   # CPU (PyTorch CPU wheel)
#   docker build --build-arg TORCH_VARIANT=cu128 -t brats-seg:cuda .   # CUDA 12.8 PyTorch wheel
#   docker run --rm -v $PWD/data:/data brats-seg ingest /data/cases --out /data/raw.json
# (GPU: docker run --gpus all ...; the CUDA runtime comes with the PyTorch wheel, the driver from the host.)
# Training with loader workers needs shared memory: Docker's default /dev/shm is 64 MB, less than one
# batch of the GPU recipe (2 x 4 x 128^3 float32 = 67 MB); with 8 workers x prefetch 2 it needs ~1.2 GB per GPU.
#   docker run --rm --gpus all --shm-size=2g -v $PWD/data:/data brats-seg:cuda train \
#       --config /opt/brats-seg/pipelines/train/train_gpu_brats.yaml --data /data/pp/preprocessed.json --out /data/runs/gpu
# (--ipc=host shares the host's /dev/shm instead; too little stops training at start with an error naming
#  /dev/shm and the size it needs, or set data.num_workers=0.)
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY brats_seg ./brats_seg
RUN pip install .

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="brats-seg" \
      org.opencontainers.image.description="BraTS 3D segmentation pipeline and 2D segmentation models"
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
COPY --from=build /opt/venv /opt/venv
COPY pipelines /opt/brats-seg/pipelines
RUN groupadd --gid 10001 brats \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin brats \
    && brats-seg --version
USER 10001:10001
WORKDIR /home/brats
HEALTHCHECK --interval=5m --timeout=30s --retries=1 CMD ["brats-seg", "--version"]
ENTRYPOINT ["brats-seg"]
CMD ["--help"]
