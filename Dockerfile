# One image for every legato service: `legato run <service>` picks the
# service, `legato up` runs them all. `docker build .` (and `docker compose
# up`) compiles the binary from the workspace lock file in the `build`
# stage; the `prebuilt` target takes a binary built elsewhere instead
# (`legato` at the root of the build context), which is how the test
# command builds it on a machine that cannot pull `rust:` images. Both end
# in the same runtime stage, `runtime`. BuildKit (Docker's default builder)
# and Podman build only the stages the target needs; the legacy builder
# builds every stage before its target, so with it build `--target
# prebuilt` (as the test does) or put a `legato` binary in the context.

# What every service runs in: Debian's slim base, CA certificates, the
# catalogue of workflows, a user without privileges, a health check.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
    && useradd --system --create-home --home-dir /app legato \
    && mkdir /data && chown legato /data
COPY workflows /app/workflows
WORKDIR /app
USER legato
ENV LEGATO__HTTP__HOST=0.0.0.0
# Each service listens on LEGATO__HTTP__PORT (`legato up` on 8080); the
# probe asks its readiness endpoint.
HEALTHCHECK --interval=5s --timeout=5s --retries=12 \
    CMD legato probe "http://127.0.0.1:${LEGATO__HTTP__PORT:-8080}/readyz"
ENTRYPOINT ["legato"]
CMD ["up", "--host", "0.0.0.0"]

# A binary built outside (same Debian 12 glibc), stripped of debug info.
FROM runtime AS prebuilt
COPY --chown=root:root legato /usr/local/bin/legato

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p legato \
    && strip target/release/legato \
    && cp target/release/legato /usr/local/bin/legato

# The default target: the runtime with the binary built above.
FROM runtime AS release
COPY --from=build /usr/local/bin/legato /usr/local/bin/legato
