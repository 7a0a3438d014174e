# syntax=docker/dockerfile:1
#
# gitlab-pkg-cache: built with the Rust toolchain, run on Debian slim as a non-root user.
#
#   docker build -t gitlab-pkg-cache .
#   docker run -p 8080:8080 -v gitlab-pkg-cache-data:/data \
#       -e GITLAB_PKG_CACHE_UPSTREAM=https://gitlab.example.com gitlab-pkg-cache
#
# Stages: `builder` compiles the proxy; `fake-gitlab` is the stand-in GitLab of
# `docker compose --profile demo` (the `fake_gitlab` example, built on `builder`); the last
# stage, `runtime`, is the default target and the image to deploy.

# The lockfile needs Rust 1.89 or newer (moka's uuid); this is the toolchain CI tests with.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# Only what the build reads: the manifest names benches/hot_paths.rs, and the example
# compiles tests/support into itself. Never the host's target/ directory.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
COPY tests ./tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin gitlab-pkg-cache \
    && install -D -m 0755 target/release/gitlab-pkg-cache /out/gitlab-pkg-cache

FROM builder AS fake-gitlab-build
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --example fake_gitlab \
    && install -D -m 0755 target/release/examples/fake_gitlab /out/fake_gitlab

# The stand-in GitLab, for demos only. Ruby is there so that it can build real demo gems
# (`gem build`) at start; without it, it serves the Go modules only.
FROM debian:${DEBIAN_RELEASE}-slim AS fake-gitlab
# Unpinned on purpose: the release's current (security-patched) package.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ruby \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10002 fake \
    && useradd --system --uid 10002 --gid fake --create-home --home-dir /home/fake \
        --shell /usr/sbin/nologin fake
COPY --from=fake-gitlab-build /out/fake_gitlab /usr/local/bin/fake_gitlab
USER 10002:10002
WORKDIR /home/fake
EXPOSE 8081
ENTRYPOINT ["fake_gitlab"]
CMD ["--listen", "0.0.0.0:8081"]

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# CA certificates for GitLab over HTTPS (the proxy also trusts its built-in webpki roots,
# and GITLAB_PKG_CACHE_UPSTREAM_CA_FILE adds an in-house CA). Unpinned on purpose: the
# release's current package.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gitlab-pkg-cache \
    && useradd --system --uid 10001 --gid gitlab-pkg-cache --no-create-home \
        --home-dir /data --shell /usr/sbin/nologin gitlab-pkg-cache \
    && install -d -m 0750 -o gitlab-pkg-cache -g gitlab-pkg-cache /data
COPY --from=builder /out/gitlab-pkg-cache /usr/local/bin/gitlab-pkg-cache
# Defaults for a container; the upstream (GITLAB_PKG_CACHE_UPSTREAM) must be given.
ENV GITLAB_PKG_CACHE_LISTEN=0.0.0.0:8080 \
    GITLAB_PKG_CACHE_DATA_DIR=/data
# Numeric, so that orchestrators can check it is not root (runAsNonRoot).
USER 10001:10001
WORKDIR /data
# The artifact store (sled) and the credential-fingerprint key: keep them across upgrades.
VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["gitlab-pkg-cache"]
CMD ["serve"]
