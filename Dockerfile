# syntax=docker/dockerfile:1
# opsync: a release build on Debian bookworm, run as a non-root user.
#
#   docker build -t opsync .
#   docker run -p 8080:8080 -v opsync-data:/data opsync
#
# SQLite (the default) and the root key live in /data. For Postgres, set
# OPSYNC_DB=postgres://… (see docker-compose.yml).

FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the build reads: the binary embeds migrations/ and static/index.html.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY static ./static
# The cache mounts keep the registry and target/ between builds; the binary is
# copied out of target/ in the same step, because the mount is not in the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && cp target/release/opsync /usr/local/bin/opsync

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq5 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 opsync \
 && useradd --system --uid 10001 --gid opsync --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin opsync \
 && mkdir /data \
 && chown opsync:opsync /data
COPY --from=build /usr/local/bin/opsync /usr/local/bin/opsync
USER opsync
WORKDIR /data
# Also the default for commands run with `docker exec` (e.g. `opsync token issue`),
# so they find the root key without --data-dir.
ENV OPSYNC_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8080
# No HEALTHCHECK: the image has no curl. Probe GET /healthz (process up) and
# GET /readyz (database answers) from outside instead.
ENTRYPOINT ["opsync"]
CMD ["serve", "--listen", "0.0.0.0:8080", "--data-dir", "/data"]
