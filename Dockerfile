# syntax=docker/dockerfile:1
# Multi-stage build: a Rust builder, then a scratch runtime holding only the static binary, the CA bundle and an
# empty state directory owned by the non-root user.
#   docker build -t token-rotator .
# CI (scripts/image.sh) builds the runtime stage below unchanged, with the `build` stage replaced by a directory of
# the same layout (`--build-context build=DIR`), because base images cannot be pulled there.
FROM rust:1.95-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY . .
# A static glibc binary (crt-static, the `dist` profile). glibc >= 2.34 carries its `files` and `dns` name lookup
# inside libc, so /etc/hosts and DNS work on scratch without NSS modules.
RUN target="$(rustc -vV | sed -n 's/^host: //p')" \
    && RUSTFLAGS="-C target-feature=+crt-static" \
       cargo build --profile dist --locked --target "$target" -p token-rotator \
    && install -D -m 0755 "target/$target/dist/token-rotator" /out/rootfs/usr/local/bin/token-rotator \
    && install -D -m 0644 /etc/ssl/certs/ca-certificates.crt /out/rootfs/etc/ssl/certs/ca-certificates.crt \
    && install -D -m 0644 THIRD-PARTY-LICENSES /out/rootfs/usr/share/doc/token-rotator/THIRD-PARTY-LICENSES \
    && install -d -m 0755 /out/rootfs/var/lib \
    && install -d -m 0700 /out/state/token-rotator

FROM scratch
# Root-owned: the binary, the CA bundle, the licences of the crates linked into the binary, /var/lib.
COPY --from=build /out/rootfs/ /
# The state directory, owned by the runtime user with the mode 0700 the daemon demands. Copying the *contents* of
# /out/state/ keeps the directory's own mode; a COPY onto the directory's path would create it 0755 (refused).
COPY --from=build --chown=65532:65532 /out/state/ /var/lib/
USER 65532:65532
# GLIBC_TUNABLES: as in systemd/token-rotator.service (a fixed mmap threshold, a smaller idle heap).
# hadolint ignore=DL3064
ENV TOKEN_ROTATOR_CONFIG=/etc/token-rotator/policy.toml \
    STATE_DIRECTORY=/var/lib/token-rotator \
    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072
VOLUME ["/var/lib/token-rotator"]
EXPOSE 9851
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/token-rotator", "healthcheck"]
# The policy is mounted at /etc/token-rotator/policy.toml; `listen` must be 0.0.0.0:9851 to be scraped from outside.
# Runs with a read-only root file system: the daemon writes only to the state volume.
ENTRYPOINT ["/usr/local/bin/token-rotator"]
CMD ["run"]
