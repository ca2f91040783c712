# syntax=docker/dockerfile:1
# GPU image: NVIDIA's PyTorch container (CUDA 12, cuDNN 9, TensorRT 10 and a CUDA build of torch) plus
# this project with its `gpu` extra.
#   docker build -t faceedit-stream .
#   docker run --gpus all --rm faceedit-stream doctor
#   docker run --gpus all --rm -v $PWD/media:/media -v faceedit-cache:/cache faceedit-stream file /media/in.mp4 ...
ARG BASE=nvcr.io/nvidia/pytorch:24.12-py3
FROM ${BASE}

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    FACEEDIT_CACHE_DIR=/cache

# opencv-python needs libGL and glib at import time
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md run_stream.py ./
COPY stream stream
COPY engines engines
COPY calibration calibration
COPY training training
COPY assets assets
COPY bench bench

# Pin the container's own CUDA torch so resolving the dependencies never swaps in a PyPI build.
# onnxruntime (a base dependency) and onnxruntime-gpu (the gpu extra) install the same `onnxruntime`
# module; whichever lands last wins, so reinstall the GPU build alone at the end.
# Editable install: the demo pack is found beside the sources (assets/), not in site-packages.
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/constraints.txt \
 && pip install -c /tmp/constraints.txt -e '.[gpu]' \
 && pip uninstall -y onnxruntime onnxruntime-gpu \
 && pip install -c /tmp/constraints.txt 'onnxruntime-gpu>=1.18'

# Built engines and exported graphs are cached here (keyed by GPU and TensorRT version): mount a volume
# so a container restart does not rebuild them.
VOLUME /cache

# Smoke check: every dependency imports and the CLI starts (no GPU is visible during `docker build`;
# `docker run --gpus all ... doctor` then reports CUDA and TensorRT).
RUN python run_stream.py doctor

ENTRYPOINT ["python", "run_stream.py"]
CMD ["doctor"]
