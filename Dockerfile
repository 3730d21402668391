# syntax=docker/dockerfile:1
# The agentvault image: one binary on distroless (glibc, CA certificates, no
# shell), run as uid 65532. The same image runs the sidecar (`agentvault serve`),
# the admission webhook (`agentvault webhook`) and the offline injector
# (`agentvault inject`). The binary is on the image's PATH because the injected
# sidecar's startupProbe execs `agentvault health` by name.
#
#   docker build -t ghcr.io/agentvault/agentvault:0.1.0 .

# ---- build: the dist binary (no debug info), stripped after the build ----
# The dist profile's own settings are the ones link/symbol-order.txt was made
# with: override none of them here, or the symbol order names nothing.
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
ENV CARGO_TERM_COLOR=never
COPY Cargo.toml Cargo.lock build.rs ./
COPY link ./link
COPY benches ./benches
COPY policies ./policies
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked --bin agentvault \
 && strip -o /usr/local/bin/agentvault target/dist/agentvault

# ---- runtime: nothing but the binary ----
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="agentvault" \
      org.opencontainers.image.description="Identity-scoped secrets for AI agents: sidecar, admission webhook and injector" \
      org.opencontainers.image.source="https://github.com/agentvault/agentvault" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build --chown=0:0 --chmod=0555 /usr/local/bin/agentvault /usr/local/bin/agentvault
# mimalloc commits its arenas eagerly by default: that alone took 16 of an
# idle sidecar's 29 MiB resident; committed on use instead, a sidecar pays
# only for what it holds.
ENV MIMALLOC_ARENA_EAGER_COMMIT=0
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/agentvault"]
