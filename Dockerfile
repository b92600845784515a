# syntax=docker/dockerfile:1
#
# One image for every avgate process; the command picks the role:
#   python -m gateway | python -m services.<name> | avgate db migrate
# The Helm chart (helm/avgate) sets the command per Deployment.
#
#   docker build -t avgate:0.1.0 .
#
# Both stages start from the same base so the virtual environment copied into
# the runtime stage finds the same /usr/local/bin/python3.11.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

# Dependencies first, from the pinned lock alone (--no-deps: nothing outside the
# lock sneaks in), so this layer is reused until the lock changes. The lock can
# be swapped for a runtime-only one without editing this file.
ARG REQUIREMENTS=requirements.lock
COPY ${REQUIREMENTS} /tmp/requirements.lock
RUN pip install --no-deps -r /tmp/requirements.lock

# .dockerignore is an allow-list: only the package sources, the protos and the
# generator reach this COPY (no .git, no virtualenvs, no local keys or state).
WORKDIR /src
COPY . .

# grpcio-tools is a runtime dependency, so the venv can generate the proto
# modules into avgate/*/v1 before the package is built from this tree.
RUN python scripts/gen_protos.py \
 && pip install --no-deps . \
 && pip check

FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="avgate" \
      org.opencontainers.image.description="Compliance gateway for online audio/video platforms" \
      org.opencontainers.image.version="${VERSION}"

# Fixed numeric ids so Kubernetes can verify runAsNonRoot; no home, no login shell.
RUN groupadd --system --gid 10001 avgate \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin avgate

COPY --from=build /opt/venv /opt/venv

# The root filesystem is read-only in Kubernetes: bytecode was compiled at build
# time and nothing may try to write it; state goes to the /tmp emptyDir.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AVGATE_STATE_DIR=/tmp/avgate

WORKDIR /opt/avgate
USER 10001:10001

# gateway gRPC, identity/screening/reporting/complaints gRPC, Prometheus metrics
EXPOSE 50051 50061-50064 9460-9464

# Exec form: python is PID 1 and receives SIGTERM for the gRPC graceful drain.
CMD ["python", "-m", "gateway"]
