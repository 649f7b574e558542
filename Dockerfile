# raftmq container image: one static-ish binary on a slim Debian runtime.
#   docker build -t raftmq .
#   docker run --rm raftmq --help
# Used by deploy/docker-compose.yml and deploy/k8s/ (image name `raftmq`).

# Build stage: the whole toolchain, discarded afterwards. protoc is vendored by the build
# script (protoc-bin-vendored), so no system protobuf compiler is needed.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Manifests first, so that dependency builds are cached while only sources change.
COPY Cargo.toml Cargo.lock build.rs ./
COPY bench/Cargo.toml bench/Cargo.toml
COPY raft-tests/chaos/Cargo.toml raft-tests/chaos/Cargo.toml
COPY proto proto
COPY src src
COPY bench bench
COPY raft-tests raft-tests
COPY tests tests
RUN cargo build --release --locked --bin raftmq \
 && install -D -m 0755 target/release/raftmq /out/raftmq

# Runtime stage: the binary, CA certificates, a shell for the StatefulSet's node-id
# arithmetic, and an unprivileged user; nothing else.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 raftmq \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /data --shell /usr/sbin/nologin raftmq \
 && install -d -o raftmq -g raftmq /data
COPY --from=build /out/raftmq /usr/local/bin/raftmq
USER 10001:10001
VOLUME ["/data"]
# 9876 nameserver (gRPC), 8081 broker (gRPC: clients, Raft, admin), 9081 broker HTTP.
EXPOSE 9876 8081 9081
ENTRYPOINT ["raftmq"]
CMD ["--help"]
