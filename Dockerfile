# syntax=docker/dockerfile:1
#
# pipeline-lock in a small image: a static musl build on Alpine, copied into a plain Alpine
# base that keeps /bin/sh (CI jobs run their scripts in it), CA certificates for the AWS
# endpoints, and a non-root user.
#
#   docker build -t pipeline-lock .
#   docker run --rm -e AWS_REGION -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY \
#     pipeline-lock pipeline-lock status --table pipeline-locks --lock my/project
#
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 . builds
# x86_64-unknown-linux-musl and aarch64-unknown-linux-musl natively on each platform.

ARG RUST_VERSION=1
ARG ALPINE_VERSION=3

FROM rust:${RUST_VERSION}-alpine AS build
SHELL ["/bin/ash", "-eo", "pipefail", "-c"]
# aws-lc-sys (TLS) compiles C; Alpine's toolchain links against musl. Versions follow the
# Alpine release of the base image (pinning them would break on its next point release).
# hadolint ignore=DL3018
RUN apk add --no-cache build-base cmake perl musl-dev
WORKDIR /src

# Dependencies first, in their own layer: rebuilt only when Cargo.toml/Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN target="$(uname -m)-unknown-linux-musl" \
 && mkdir -p src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --target "$target" \
 && rm -rf src

COPY . .
RUN target="$(uname -m)-unknown-linux-musl" \
 && find src -name '*.rs' -exec touch {} + \
 && cargo build --release --locked --target "$target" --bin pipeline-lock \
 && install -m 0755 "target/$target/release/pipeline-lock" /usr/local/bin/pipeline-lock \
 && if ldd /usr/local/bin/pipeline-lock 2>&1 | grep -q '=>'; then echo "not a static binary" >&2; exit 1; fi \
 && /usr/local/bin/pipeline-lock --help > /dev/null

FROM alpine:${ALPINE_VERSION}
# hadolint ignore=DL3018
RUN apk add --no-cache ca-certificates \
 && addgroup -S -g 10001 pipeline-lock \
 && adduser -S -D -H -u 10001 -G pipeline-lock -h /tmp -s /sbin/nologin pipeline-lock
COPY --from=build /usr/local/bin/pipeline-lock /usr/local/bin/pipeline-lock
USER 10001:10001
WORKDIR /tmp
LABEL org.opencontainers.image.title="pipeline-lock" \
      org.opencontainers.image.description="A lock that CI pipelines take in one job and give back in a later one (DynamoDB, S3)"
# A one-shot command line tool, not a service: nothing to probe.
HEALTHCHECK NONE
# No ENTRYPOINT: CI systems run their job scripts through /bin/sh in this image.
CMD ["pipeline-lock", "--help"]
