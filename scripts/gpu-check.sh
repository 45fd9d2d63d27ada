#!/usr/bin/env bash
# The GPU check, for a session that has the device machine (an H100/H200 with the
# CUDA driver and PyTorch; no libyaml, libcjson, libprotobuf-c or LLVM). Build here,
# carry the binary, the libraries it needs and the peer script, run everything there
# in one go:
#
#   here:   scripts/gpu-check.sh prep      # builds build-gpu/alexc (no LLVM), fills build-gpu/devlibs
#   there:  device run, carry ["build-gpu/alexc", "build-gpu/devlibs"], command:
#           scripts/gpu-check.sh run bench  # benchmarks and PyTorch peers
#           scripts/gpu-check.sh run tests  # tests/cuda/gpu.sh; `run` alone = both
#   (each meant to fit one 10-minute device command; not yet timed on a GPU: use a
#   timeout that leaves room, and `run quick` first if time is short)
#   here, first: scripts/gpu-check.sh rehearse   # the same steps against the fake driver
#
# `run` prints the GPU's name, then: alexc bench of specs/alexnet.yaml at batch 128
# (fused against unfused, fp32, tf32, bf16; --conv implicit and fused, in fp32 and on
# tensor cores; and two devices), PyTorch's
# peer timings in the same run (../shared/bench/torch_peers.py, eager and torch.compile), and the GPU
# correctness test (tests/cuda/gpu.sh: every spec, precision, fused/unfused, 1/2
# devices, against the reference executor). Everything also lands in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
prep)
  scripts/deps.sh
  # No LLVM: libLLVM alone is bigger than what travels to the device machine.
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DALEXC_LLVM=OFF >/dev/null
  cmake --build build-gpu -j"$(nproc)" --target alexc
  mkdir -p build-gpu/devlibs
  # The shared libraries alexc needs that the device machine may lack (the runtime decodes
  # photos with libjpeg and libpng; `alexc import` parses ONNX with libprotobuf-c).
  for lib in libyaml-0.so.2 libcjson.so.1 libjpeg.so.62 libpng16.so.16 libprotobuf-c.so.1; do
    cp -L "$(ldconfig -p | awk -v l="$lib" '$1 == l { print $NF; exit }')" build-gpu/devlibs/
  done
  cp ../shared/bench/torch_peers.py build-gpu/devlibs/ 2>/dev/null ||
    echo "note: ../shared/bench/torch_peers.py not found: no peer timings" >&2
  ls -la build-gpu/alexc build-gpu/devlibs
  ;;
run | rehearse)
  # rehearse: the same steps on this machine, against the fake CUDA driver of
  # tests/cuda/fake/ (built in build/ by scripts/test.sh or cmake), on the small spec,
  # so a change to this script or to gpu.sh is tried before the GPU's minutes are spent.
  alexc=${ALEXC:-build-gpu/alexc}
  spec=specs/alexnet.yaml batch=128 runs=20 warmup=3 gpu_specs=()
  export ALEXC_CACHE="${TMPDIR:-/tmp}/alexc-cache"
  if [ "$1" = rehearse ]; then
    alexc=${ALEXC:-build/alexc} spec=specs/mini-alexnet.yaml batch=4 runs=2 warmup=1
    gpu_specs=(specs/mini-alexnet.yaml)
    fake=$(dirname "$alexc")/tests/fake-cuda
    # No fake driver (a build without the CUDA toolkit): nothing to rehearse with; 77
    # is ctest's "skipped".
    [ -f "$fake/libcuda.so.1" ] || { echo "rehearse: no fake driver in $fake" >&2; exit 77; }
    ALEXC_CACHE=$(mktemp -d)
    trap 'rm -rf "$ALEXC_CACHE"' EXIT
    export LD_LIBRARY_PATH="$fake" ALEXC_FAKE_CUDA_MODULES="$ALEXC_CACHE/modules" \
      ALEXC_FAKE_CUDA_CACHE="$ALEXC_CACHE" ALEXC_FAKE_CUDA_EMU="$PWD/tests/cuda/cuda_emu.h"
    mkdir -p "$ALEXC_FAKE_CUDA_MODULES"
    # gpu.sh's script on two of its variants: each one is a g++ build of the kernels here.
    export ALEXC_GPU_TEST_VARIANTS="gemm fp32,fused tf32"
  else
    export LD_LIBRARY_PATH="$PWD/build-gpu/devlibs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    # NVRTC's headers (<mma.h> for the tensor-core kernels) from this machine's toolkit.
    if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then
      CUDA_HOME=$(dirname "$(dirname "$(command -v nvcc)")")
      export CUDA_HOME
    fi
  fi
  out=${OUT:-$PWD/gpu-check-out}
  mkdir -p "$out"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt" || true
  fi
  # What to run: all (default), bench (the benchmarks and the peers), tests (gpu.sh),
  # quick (fp32 benchmarks and peers only). One command may run 10 minutes at most on
  # the device machine: `all` may not fit; `bench` and `tests` are two calls that do.
  what=${2:-all}
  case $what in all | bench | tests | quick) ;; *) echo "gpu-check: run all|bench|tests|quick" >&2; exit 2 ;; esac
  precisions="fp32 tf32 bf16"
  [ "$what" = quick ] && precisions=fp32
  status=0
  bench() {  # bench NAME OPTIONS...: one alexc bench table into $out/bench-NAME.md
    local name=$1
    shift
    echo "== alexc bench $*"
    # In an `if`: under set -e a failing pipeline would end the script without a word.
    if ! "$alexc" bench "$spec" --target cuda --batch "$batch" --runs "$runs" --warmup "$warmup" \
      "$@" | tee "$out/bench-$name.md"; then
      echo "bench $name FAILED"
      status=1
    fi
  }
  if [ "$what" != tests ]; then
    for p in $precisions; do
      bench "$p" --precision "$p" --compare-unfused
    done
    bench fp32-implicit --conv implicit --compare-unfused
    bench fp32-convfused --conv fused --compare-unfused
    if [ "$what" != quick ]; then  # tensor cores in the generated kernels
      bench tf32-implicit --conv implicit --precision tf32 --compare-unfused
      bench tf32-convfused --conv fused --precision tf32 --compare-unfused
      bench bf16-convfused --conv fused --precision bf16 --compare-unfused
    fi
    bench fp32-2dev --devices 2
  fi
  if [ "$1" = run ] && [ "$what" != tests ] && [ -f build-gpu/devlibs/torch_peers.py ]; then
    echo "== PyTorch peers"
    # shellcheck disable=SC2086
    python3 build-gpu/devlibs/torch_peers.py --device cuda --batch 128 --precision $precisions \
      --compile | tee "$out/peers.txt" || { echo "peers FAILED"; status=1; }
  fi
  if [ "$what" = all ] || [ "$what" = tests ]; then
    echo "== GPU correctness (tests/cuda/gpu.sh)"
    bash tests/cuda/gpu.sh "$alexc" "${gpu_specs[@]}" | tee "$out/gpu-tests.txt" || status=1
  fi
  exit $status
  ;;
*)
  echo "usage: scripts/gpu-check.sh prep | run [all|bench|tests|quick] | rehearse [same]" >&2
  exit 2
  ;;
esac
