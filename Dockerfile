# The gateway's images, two targets of one Dockerfile (docs/thin-gateway.md):
#
#   gateway  the default (`docker build .`): gunicorn serving `app:create_app()` on :8000, a client of TF
#            Serving over gRPC (GATEWAY_BACKEND=grpc). requirements-gateway.txt alone: no TensorFlow.
#   tools    the same app with TensorFlow (requirements.txt): `flask --app app export-models | build-index |
#            check-models`, and the embedded backend (GATEWAY_BACKEND=local) that runs the SavedModels itself.
#
# docker-compose.yaml builds `tools` for its one-shot `models` job and `gateway` for the gateway.

FROM python:3.11.13-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# A fixed uid, so that file ownership on mounted folders is predictable. serving_models/ and the
# weights cache are created here so that mounts and named volumes start out owned by that user.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --create-home --home-dir /home/gateway \
        --shell /usr/sbin/nologin gateway \
    && mkdir -p /app/serving_models /cache \
    && chown gateway:gateway /app/serving_models /cache

ENV GATEWAY_BIND=0.0.0.0:8000 \
    GATEWAY_CACHE_DIR=/cache
EXPOSE 8000

# Healthy while /readyz answers 200: every pipeline servable AVAILABLE behind the configured backend.
# Python, because the slim image has no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request\ntry:\n    urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)\nexcept Exception as exc:\n    sys.exit(f'not ready: {exc}')"]

CMD ["gunicorn", "--config", "gunicorn.conf.py", "app:create_app()"]


# What both targets run: the app, its pages and its settings, copied after the dependencies' layer so
# that a code change does not reinstall them.
FROM scratch AS source
COPY app/ /app/app/
COPY templates/ /app/templates/
COPY static/ /app/static/
COPY serving_models.config pipeline.toml gunicorn.conf.py /app/


FROM base AS tools
# Every compiled wheel in requirements.txt bundles its libraries beyond glibc, libstdc++ and zlib,
# which the slim image has, so no apt packages are needed.
COPY requirements-gateway.txt requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
COPY --from=source /app/ /app/
USER gateway


FROM base AS gateway
COPY requirements-gateway.txt ./
RUN pip install --no-cache-dir -r requirements-gateway.txt
COPY --from=source /app/ /app/
# This image has no TensorFlow, so it cannot run the embedded backend (the app's default): it is a client
# of TF Serving. GATEWAY_SERVING_TARGET says where that is (compose sets dns:///serving:8500).
ENV GATEWAY_BACKEND=grpc
USER gateway
