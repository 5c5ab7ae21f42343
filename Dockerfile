# syntax=docker/dockerfile:1.7
# One image per service, from the one locked workspace:
#   docker build --build-arg SERVICE=ledger -t billing-ledger:0.1.0 .
# SERVICE is the Python package: checkout, webhook_ingest, ledger, metering, reconciler,
# devllm (the dev model server, for docker-compose only), or billing_cli (the ops CLI, run by
# the chart's probe CronJob as `probe ...`; tag it billing-cli). The image runs
# `python -m <SERVICE>`, `serve` by default; `migrate` is the same image with another command.
ARG SERVICE=checkout

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM python:3.11-slim AS build
ARG SERVICE
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=uv /uv /usr/local/bin/uv
# Bytecode is compiled here because the running container may not write it (read-only root).
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# The workspace's distribution names are the packages' with "-" for "_".
# Third-party dependencies alone first: this layer survives edits to the project's code.
# The lockfile is enough for that, the workspace members' sources are not needed yet.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-install-workspace --package "$(echo "${SERVICE}" | tr _ -)"
COPY . /src
# Non-editable, so the venv holds the workspace packages themselves and /src can stay behind.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package "$(echo "${SERVICE}" | tr _ -)" \
    && /app/.venv/bin/python -c "import ${SERVICE}"

FROM python:3.11-slim AS runtime
ARG SERVICE
RUN groupadd --gid 10001 billing \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
       --shell /usr/sbin/nologin billing
COPY --from=build --chown=0:0 /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
LABEL org.opencontainers.image.title="billing-${SERVICE}" \
      org.opencontainers.image.version="0.1.0"
WORKDIR /tmp
USER 10001:10001

# Docker does not substitute build arguments in ENTRYPOINT, so each package has a stage that
# names it literally and the final stage is picked by SERVICE.
FROM runtime AS service-checkout
ENTRYPOINT ["python", "-m", "checkout"]

FROM runtime AS service-webhook_ingest
ENTRYPOINT ["python", "-m", "webhook_ingest"]

FROM runtime AS service-ledger
ENTRYPOINT ["python", "-m", "ledger"]

FROM runtime AS service-metering
ENTRYPOINT ["python", "-m", "metering"]

FROM runtime AS service-reconciler
ENTRYPOINT ["python", "-m", "reconciler"]

FROM runtime AS service-devllm
ENTRYPOINT ["python", "-m", "devllm"]

FROM runtime AS service-billing_cli
ENTRYPOINT ["python", "-m", "billing_cli"]

# A stage of this file, not an image from a registry.
# hadolint ignore=DL3006
FROM service-${SERVICE}
CMD ["serve"]
