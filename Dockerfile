# The gateway's images, two targets of one Dockerfile (docs/thin-gateway.md):
#
#   gateway  the default (`docker build .`): gunicorn serving `app:create_app()` on :8000, a client of TF
#            Serving over gRPC (GATEWAY_BACKEND=grpc). requirements-gateway.txt alone: no TensorFlow.
#   tools    the same app with TensorFlow (requirements.txt): `flask --app app export-models | build-index |
#            check-models`, and the embedded backend (GATEWAY_BACKEND=local) that runs the SavedModels itself.
#
# docker-compose.yaml builds `tools` for its one-shot `models` job and `gateway` for the gateway.
#
# BuildKit builds it (Docker 23 and later by default; DOCKER_BUILDKIT=1 on Docker 20.10): the requirements
# files and the wheels are mounted into the one RUN that installs them instead of being copied into a
# layer, and only the stages the target needs are built (`--target gateway` never installs TensorFlow).
#
# Build arguments, all optional; the defaults build what users pull:
#   BASE_IMAGE      a Python 3.11 image with pip, bash and useradd (docs/deployment.md builds one with
#                   debootstrap where no registry can be reached)
#   WHEELHOUSE      an image whose files are wheels, mounted at /wheels while pip runs (default: none)
#   PIP_NO_INDEX, PIP_FIND_LINKS
#                   pip's own settings: PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels installs from WHEELHOUSE
#                   alone, so that `docker build --network none` works

ARG BASE_IMAGE=python:3.11.13-slim-bookworm
ARG WHEELHOUSE=scratch

FROM ${WHEELHOUSE} AS wheelhouse

FROM ${BASE_IMAGE} AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid, so that file ownership on mounted folders is predictable. serving_models/ and the
# weights cache are created here so that mounts and named volumes start out owned by that user.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --create-home --home-dir /home/gateway \
        --shell /usr/sbin/nologin gateway \
    && mkdir -p /app/serving_models /cache \
    && chown gateway:gateway /app/serving_models /cache

WORKDIR /app

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
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
# Every compiled wheel in requirements.txt bundles its libraries beyond glibc, libstdc++ and zlib,
# which the slim image has, so no apt packages are needed.
RUN --mount=type=bind,source=requirements-gateway.txt,target=/tmp/requirements/requirements-gateway.txt \
    --mount=type=bind,source=requirements.txt,target=/tmp/requirements/requirements.txt \
    --mount=type=bind,from=wheelhouse,target=/wheels \
    pip install --no-cache-dir -r /tmp/requirements/requirements.txt
COPY --from=source /app/ /app/
USER gateway


# The default target, so the last stage.
FROM base AS gateway
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
RUN --mount=type=bind,source=requirements-gateway.txt,target=/tmp/requirements/requirements-gateway.txt \
    --mount=type=bind,from=wheelhouse,target=/wheels \
    pip install --no-cache-dir -r /tmp/requirements/requirements-gateway.txt
COPY --from=source /app/ /app/
# This image has no TensorFlow, so it cannot run the embedded backend (the app's default): it is a client
# of TF Serving. GATEWAY_SERVING_TARGET says where that is (compose sets dns:///serving:8500).
ENV GATEWAY_BACKEND=grpc
USER gateway
