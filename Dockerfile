# The arc-onboard container image: the release binary alone on a distroless base (glibc, CA certificates,
# no shell, no package manager), running as the non-root user 65532 that scripts/deploy/kubernetes*.yaml
# run it as. Build from the repository root:
#   docker build -t arc-onboard:0.1.0 .
# then push it to your registry and pin it by digest in the manifests.

# Build: the same toolchain line as the project's, Debian 12 to match the runtime's glibc.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin arc-onboard \
    && install -D -m 0755 target/release/arc-onboard /out/arc-onboard

# Run: distroless's C runtime image (glibc, libgcc, CA certificates), as nonroot (65532:65532).
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="arc-onboard" \
      org.opencontainers.image.description="Onboards AWS EC2 instances to Azure Arc through SSM Run Command" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="MIT"
COPY --from=build /out/arc-onboard /usr/local/bin/arc-onboard
USER 65532:65532
WORKDIR /var/lib/arc-onboard
ENTRYPOINT ["/usr/local/bin/arc-onboard"]
CMD ["--help"]
