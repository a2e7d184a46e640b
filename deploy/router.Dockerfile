# vllm-router (PyPI, the vLLM project's Rust router) for Compose and bare metal; Kubernetes can run the same image.
#   docker build -f deploy/router.Dockerfile -t ratchet-vllm-router:0.1.17 deploy
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
FROM ${PYTHON_IMAGE}
ARG VLLM_ROUTER_VERSION=0.1.17
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --no-cache-dir "vllm-router==${VLLM_ROUTER_VERSION}" \
    && useradd --system --uid 10002 --no-create-home router
USER 10002:10002
EXPOSE 8000 29000
HEALTHCHECK --interval=10s --timeout=4s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=3)"]
ENTRYPOINT ["vllm-router"]
