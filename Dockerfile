# One image for every legato service: `legato run <service>` picks the
# service, `legato up` runs them all. Built from the workspace lock file.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p legato \
    && cp target/release/legato /usr/local/bin/legato

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /app legato \
    && mkdir /data && chown legato /data
COPY --from=build /usr/local/bin/legato /usr/local/bin/legato
COPY workflows /app/workflows
WORKDIR /app
USER legato
ENV LEGATO__HTTP__HOST=0.0.0.0
ENTRYPOINT ["legato"]
CMD ["up", "--host", "0.0.0.0"]
