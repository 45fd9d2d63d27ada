#!/usr/bin/env bash
# Installs the Debian packages alexc needs to build and test, if any are missing.
# Safe to run again: it installs nothing when everything is present.
set -euo pipefail
# llvm-14-dev: LLVM's C API, which the compiler uses to write model bundles (.so).
# libjpeg62-turbo-dev, libpng-dev: the runtime decodes photos to classify (runtime/image.c).
# zlib1g-dev, libcairo2-dev, dataset-fashion-mnist: training reads gzipped IDX files,
# draws its curves, and learns Fashion-MNIST (/usr/share/datasets/fashion-mnist).
# protobuf-c-compiler, libprotobuf-c-dev: `alexc import` parses ONNX models (protobuf);
# the build generates C from the checked-in onnx.proto with protoc-c.
# libopenmpi-dev, openmpi-bin: data-parallel training (`mpirun -np N alexc train`,
# compiler/train/dist.c) and its tests (tests/train/mpi.sh); a build without them trains
# in one process.
pkgs=(build-essential cmake pkg-config libyaml-dev libcjson-dev llvm-14-dev
      libjpeg62-turbo-dev libpng-dev zlib1g-dev libcairo2-dev dataset-fashion-mnist
      protobuf-c-compiler libprotobuf-c-dev libopenmpi-dev openmpi-bin)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
