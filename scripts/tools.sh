#!/usr/bin/env bash
# Builds the pinned developer tools (buf, protoc plugins, grpcurl,
# checkvalidate, staticcheck) from tools/*/go.mod into .bin/. Go's build cache makes a
# second run cheap. Prints the .bin directory.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.bin"
mkdir -p "$bin"
(cd "$root/tools/buf" && GOWORK=off GOFLAGS=-mod=mod go build -o "$bin/" github.com/bufbuild/buf/cmd/buf)
(cd "$root/tools/gen" && GOWORK=off GOFLAGS=-mod=mod go build -o "$bin/" \
  google.golang.org/protobuf/cmd/protoc-gen-go \
  google.golang.org/grpc/cmd/protoc-gen-go-grpc \
  github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway \
  github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2 \
  github.com/fullstorydev/grpcurl/cmd/grpcurl \
  ./cmd/checkvalidate)
(cd "$root/tools/staticcheck" && GOWORK=off GOFLAGS=-mod=mod go build -o "$bin/" honnef.co/go/tools/cmd/staticcheck)
echo "$bin"
