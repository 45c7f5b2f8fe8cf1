# syntax=docker/dockerfile:1

# One Python image for both stages: the virtualenv built below links to this image's interpreter
# (/usr/local/bin/python3.11) and its compiled wheels (grpcio, pydantic-core) target this
# image's Python ABI and glibc, so the runtime must be exactly the same image.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- build: a self-contained virtualenv with the function and its dependencies ------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Only what building the wheel needs (hatchling reads the readme named in pyproject.toml).
# Not fabric_discover/: the wheel's packages list it too, but hatchling skips it when absent,
# so the image holds no discovery code (the fabric-discover CLI runs from a workstation).
COPY pyproject.toml README.md ./
COPY function/ function/

# The venv lives at /venv in both stages: its scripts' shebangs hold that absolute path.
# pip builds the wheel with hatchling (isolated build) and installs it with its dependencies;
# it byte-compiles them too, so the read-only runtime never needs to write .pyc files.
# The wheel's fabric-discover script would only fail here (no fabric_discover): drop it.
RUN python -m venv /venv \
    && /venv/bin/pip install --no-cache-dir . \
    && rm /venv/bin/fabric-discover \
    && /venv/bin/function --help > /dev/null

# --- runtime ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PATH=/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

COPY --from=build /venv /venv

# Any non-root UID works; 65532 is the conventional "nonroot" of distroless images. Numeric, so
# Kubernetes' runAsNonRoot can verify it without an /etc/passwd entry.
USER 65532:65532

# gRPC (RunFunction). Crossplane mounts the TLS certificates and sets TLS_SERVER_CERTS_DIR,
# which the CLI reads; for `crossplane render` run the image or the CLI with --insecure.
EXPOSE 9443
ENTRYPOINT ["/venv/bin/function"]
CMD ["--address", "0.0.0.0:9443"]
