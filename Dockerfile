# syntax=docker/dockerfile:1
# Multi-stage build: a Rust builder, then a small non-root runtime with only the static binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN rustup target add x86_64-unknown-linux-musl && apt-get update \
    && apt-get install -y --no-install-recommends musl-tools=1.2.3-1 cmake=3.25.1-1 \
    && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p token-rotator \
    && install -D -m 0755 target/x86_64-unknown-linux-musl/release/token-rotator /out/token-rotator \
    && install -d -m 0700 /out/state

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/token-rotator /usr/local/bin/token-rotator
COPY --from=build --chown=65532:65532 /out/state /var/lib/token-rotator
USER 65532:65532
# hadolint ignore=DL3064
ENV TOKEN_ROTATOR_CONFIG=/etc/token-rotator/policy.toml \
    STATE_DIRECTORY=/var/lib/token-rotator
VOLUME ["/var/lib/token-rotator"]
EXPOSE 9851
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/token-rotator", "healthcheck"]
# The policy is mounted at /etc/token-rotator/policy.toml; `listen` must be 0.0.0.0:9851 to be scraped from outside.
ENTRYPOINT ["/usr/local/bin/token-rotator"]
CMD ["run"]
