# syntax=docker/dockerfile:1
# One image, one binary (`tally`) with its subcommands: `worker` by default,
# `gateway`, `finalize`, ... as the command.

FROM rust:1.95-slim-bookworm AS build
# make builds jemalloc, the binary's allocator (the slim image has gcc).
RUN apt-get update \
 && apt-get install -y --no-install-recommends make=4.3-4.1 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, in a layer of their own: it is rebuilt only when the
# manifests or the lock file change.
COPY Cargo.toml Cargo.lock ./
COPY crates/contract/Cargo.toml crates/contract/Cargo.toml
COPY crates/aws/Cargo.toml crates/aws/Cargo.toml
COPY crates/core/Cargo.toml crates/core/Cargo.toml
COPY crates/faults/Cargo.toml crates/faults/Cargo.toml
COPY crates/store/Cargo.toml crates/store/Cargo.toml
COPY crates/service/Cargo.toml crates/service/Cargo.toml
COPY crates/worker/Cargo.toml crates/worker/Cargo.toml
COPY crates/gateway/Cargo.toml crates/gateway/Cargo.toml
COPY crates/testkit/Cargo.toml crates/testkit/Cargo.toml
COPY lease/Cargo.toml lease/Cargo.toml
COPY producer/Cargo.toml producer/Cargo.toml
COPY ops/tally-bench/Cargo.toml ops/tally-bench/Cargo.toml
# Empty libraries stand in for the sources; the release build has no
# `faults` feature, so the fault layer and the test kit are never built.
RUN for crate in crates/contract crates/aws crates/core crates/faults crates/store \
      crates/service crates/worker crates/gateway crates/testkit lease producer; do \
      mkdir -p "$crate/src" && touch "$crate/src/lib.rs"; \
    done \
 && mkdir -p src ops/tally-bench/src ops/tally-bench/benches \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > ops/tally-bench/src/main.rs && echo 'fn main() {}' > ops/tally-bench/benches/in_process.rs \
 && cargo build --release --locked -p tally --bin tally \
 && rm -rf src crates/*/src lease/src producer/src
COPY src src
COPY crates crates
COPY lease/src lease/src
COPY producer/src producer/src
RUN find src crates lease/src producer/src -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p tally --bin tally \
 && cp target/release/tally /usr/local/bin/tally

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates=20230311* \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 tally \
 && useradd --uid 10001 --gid tally --no-create-home --shell /usr/sbin/nologin tally
COPY --from=build /usr/local/bin/tally /usr/local/bin/tally
USER 10001:10001
# Workers and gateways listen beyond loopback inside the task.
ENV TALLY_HEALTH_ADDR=0.0.0.0:9464 \
    TALLY_GATEWAY_ADDR=0.0.0.0:8080
EXPOSE 8080 9464
# The worker's health; a gateway task overrides it with /healthz on 8080.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/tally", "probe", "http://127.0.0.1:9464/health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tally"]
CMD ["worker"]
