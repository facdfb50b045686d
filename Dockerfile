# chirp's container image: one container per environment (docs/deploy.md).
#
#   docker build --build-arg CHIRP_REVISION=$(git rev-parse --short=12 HEAD) -t chirp .
#
# No Docker engine runs on the development and CI machines, so nothing here may
# need one to be checked: CI lints this file with hadolint, and
# tests/cli/image.rs checks what it promises (the build command is CI's, the
# runtime stage installs nothing and runs as a numeric non-root user, the
# binary needs nothing beyond glibc, the configuration it runs validates).

# ---- build: Rust 1.95 on Debian 12, the same `cargo build --release --locked` as CI
FROM rust:1.95-bookworm AS build
WORKDIR /src

# Dependencies first, in a layer of their own that is rebuilt only when the
# manifest, the lock file or the benches change, not on every source edit.
# librdkafka, OpenSSL and zlib are compiled from source here and linked
# statically (rdkafka's ssl-vendored and libz-static features): most of the
# build time. The two stand-in sources are replaced below.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked

# chirp itself. build.rs stamps CHIRP_REVISION into the binary (`chirp
# --version`): .git is not in the build context (.dockerignore).
ARG CHIRP_REVISION=unknown
COPY build.rs ./
COPY src ./src
# COPY keeps the files' modification times, which can be older than the
# stand-ins' build: touch them so that cargo rebuilds chirp.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked

# ---- runtime: glibc and libgcc_s, nothing else (no shell, no package manager)
FROM gcr.io/distroless/cc-debian12:nonroot

# CHIRP_VERSION follows Cargo.toml's version (a test keeps them equal);
# CHIRP_SOURCE is the repository's URL, which has no fixed home yet.
ARG CHIRP_VERSION=0.1.0
ARG CHIRP_REVISION=unknown
ARG CHIRP_SOURCE=
LABEL org.opencontainers.image.title="chirp" \
      org.opencontainers.image.description="Synthetic heartbeat and latency prober for event pipelines" \
      org.opencontainers.image.source="${CHIRP_SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${CHIRP_VERSION}" \
      org.opencontainers.image.revision="${CHIRP_REVISION}"

# Owned by root and read-only to chirp's user: it writes no file at all, so the
# root filesystem can be mounted read-only.
COPY --from=build /src/target/release/chirp /usr/local/bin/chirp
COPY probes.yaml /etc/chirp/probes.yaml

# The statically linked OpenSSL (Kafka TLS) would look for CA certificates
# under its build-time /usr/local/ssl; point it at the image's bundle.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt

# distroless' "nonroot" user, by number so that Kubernetes' runAsNonRoot can
# verify it without reading /etc/passwd.
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["chirp"]
CMD ["run", "-c", "/etc/chirp/probes.yaml"]
