# evoke's container image: build with the Rust toolchain, run on a slim
# Debian as a non-root user. `docker build -t evoke .`
#
# The entrypoint is `evoke serve`; configure it with EVOKE_* environment
# variables (`evoke serve --help` lists them all) or extra arguments.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin evoke

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /var/lib/evoke evoke
COPY --from=build /src/target/release/evoke /usr/local/bin/evoke
USER evoke
WORKDIR /var/lib/evoke
ENV EVOKE_DATA_DIR=/var/lib/evoke \
    EVOKE_HTTP_ADDR=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["evoke", "serve"]
