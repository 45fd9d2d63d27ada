#!/bin/bash
# alexc compile --target cuda from the command line: usage errors, --emit-source,
# the artifact's header, the NVRTC cache, and --target cuda without a GPU.
#
# usage: tests/cuda/cli.sh ALEXC
set -u
alexc=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export ALEXC_CACHE=$tmp/cache
failures=0
expect() {  # expect WANT_RC DESCRIPTION -- COMMAND...; output in $tmp/out
  local want=$1 what=$2
  shift 3
  "$@" >"$tmp/out" 2>&1
  local rc=$?
  if [ $rc -ne "$want" ]; then
    echo "FAIL: $what: exit $rc, want $want"; cat "$tmp/out"; failures=$((failures + 1))
  else
    echo "ok: $what"
  fi
}
contains() {  # contains TEXT DESCRIPTION
  if ! grep -q -- "$1" "$tmp/out"; then
    echo "FAIL: $2: no '$1' in:"; cat "$tmp/out"; failures=$((failures + 1))
  fi
}

expect 2 "no target" -- "$alexc" compile specs/mini-alexnet.yaml -o "$tmp/m.plan"
expect 2 "unknown target" -- "$alexc" compile specs/mini-alexnet.yaml --target llvm -o "$tmp/m.plan"
expect 2 "bad arch" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda --arch 90 -o "$tmp/m.plan"
expect 2 "bad precision" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda --precision fp16 -o x
expect 2 "nothing to write" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda
expect 2 "bad --conv" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda --conv winograd --emit-source "$tmp/x"
expect 2 "bad run --conv" -- "$alexc" run specs/mini-alexnet.yaml --seed 1 --random 1 --target cuda --conv fft
expect 0 "--conv direct" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda --conv direct --emit-source "$tmp/direct"
if grep -q "_im2col" "$tmp/direct/device0.cu"; then echo "FAIL: --conv direct emitted im2col"; failures=$((failures + 1)); fi
expect 0 "--conv gemm" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda --conv gemm --emit-source "$tmp/gemm"
grep -q "void k01_conv1_im2col(" "$tmp/gemm/device0.cu" || { echo "FAIL: --conv gemm: no im2col kernel"; failures=$((failures + 1)); }
expect 0 "help" -- "$alexc" compile --help
contains "--emit-source" "help"
contains "--precision" "help"
expect 1 "bf16 with --conv direct" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda --precision bf16 --conv direct --emit-source "$tmp/x"
contains "use --conv gemm" "bf16 with --conv direct"
expect 1 "tf32 with --conv direct" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda --precision tf32 --conv direct --emit-source "$tmp/x"
contains "use --conv gemm, implicit or fused" "tf32 with --conv direct"
expect 0 "tf32 with --conv implicit" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda --precision tf32 --conv implicit --emit-source "$tmp/implicit-tf32"
grep -q "wmma::mma_sync" "$tmp/implicit-tf32/device0.cu" || { echo "FAIL: --conv implicit --precision tf32: no tensor-core GEMM"; failures=$((failures + 1)); }
expect 0 "--conv implicit" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda --conv implicit --emit-source "$tmp/implicit"
grep -q "void k01_conv1_implicit(" "$tmp/implicit/device0.cu" || { echo "FAIL: --conv implicit: no implicit kernel"; failures=$((failures + 1)); }
if grep -q "_im2col" "$tmp/implicit/device0.cu"; then echo "FAIL: --conv implicit emitted im2col"; failures=$((failures + 1)); fi
expect 2 "bad --conv" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda --conv tiled --emit-source "$tmp/x"
contains "wants gemm, direct, implicit or fused" "bad --conv"
expect 0 "--conv fused" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda --conv fused --emit-source "$tmp/convfused"
grep -q "extern __shared__ __align__(128) unsigned char dynamic_smem\[\]" "$tmp/convfused/device0.cu" &&
  grep -q "float \*const region = reinterpret_cast<float \*>(smem + REGION_AT)" "$tmp/convfused/device0.cu" ||
  { echo "FAIL: --conv fused: no region in dynamic shared memory"; failures=$((failures + 1)); }
if grep -q "_im2col\|_implicit(" "$tmp/convfused/device0.cu"; then echo "FAIL: --conv fused emitted a second conv kernel"; failures=$((failures + 1)); fi
# --conv fused falls back to implicit + epilogue kernel when no tile's region fits in
# shared memory (an LRN over 1023 channels and an 11x11 pool need 1023 x 121 floats).
cat >"$tmp/wide.yaml" <<'YAML'
name: wide
input: {channels: 1, height: 24, width: 24}
layers:
  - {name: conv1, op: conv, out: 8, kernel: 3}
  - {name: relu1, op: relu}
  - {name: norm1, op: lrn, size: 1023, alpha: 1e-4, beta: 0.75, k: 2}
  - {name: pool1, op: maxpool, kernel: 11, stride: 1}
YAML
expect 0 "--conv fused fallback" -- "$alexc" compile "$tmp/wide.yaml" --target cuda --conv fused --emit-source "$tmp/wide"
grep -q "void k01_conv1_implicit(" "$tmp/wide/device0.cu" || { echo "FAIL: --conv fused: no fallback to the implicit kernel"; failures=$((failures + 1)); }

# Its output, pool1, is fused into conv1's node: run must still know the layer's name
# (it read freed memory once). Without a GPU it then stops at the driver.
"$alexc" run "$tmp/wide.yaml" --seed 1 --random 1 --target cuda >"$tmp/out" 2>&1
if grep -q "output only, not layer" "$tmp/out"; then
  echo "FAIL: run --target cuda lost its output layer's name:"; cat "$tmp/out"; failures=$((failures + 1))
else
  echo "ok: run --target cuda with the output layer fused away"
fi

# Per-layer --conv: conv1 fused, the other convs im2col + cuBLAS.
expect 0 "--conv per layer" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda --conv gemm,conv1=fused --emit-source "$tmp/perlayer"
grep -q "float \*const region = reinterpret_cast<float \*>(smem + REGION_AT)" "$tmp/perlayer/device0.cu" || { echo "FAIL: --conv gemm,conv1=fused: conv1 not fused"; failures=$((failures + 1)); }
grep -q "k01_conv1_im2col" "$tmp/perlayer/device0.cu" && { echo "FAIL: --conv gemm,conv1=fused: conv1 has an im2col"; failures=$((failures + 1)); }
grep -q "_im2col(" "$tmp/perlayer/device0.cu" || { echo "FAIL: --conv gemm,conv1=fused: no conv through cuBLAS"; failures=$((failures + 1)); }
expect 1 "--conv unknown layer" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda --conv gemm,conv9=fused --emit-source "$tmp/x"
contains "no conv layer 'conv9'" "--conv unknown layer"
expect 2 "--conv malformed list" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda --conv gemm,,conv1=fused --emit-source "$tmp/x"
expect 1 "--conv direct layer with tf32" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda --conv gemm,conv1=direct --precision tf32 --emit-source "$tmp/x"
contains "layer 'conv1'" "--conv direct layer with tf32"
expect 0 "tf32 source" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda --precision tf32 --emit-source "$tmp/tf32"
grep -q "Precision tf32" "$tmp/tf32/device0.cu" || { echo "FAIL: no precision in the source header"; failures=$((failures + 1)); }
expect 0 "bf16 source" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda --precision bf16 --emit-source "$tmp/bf16"
grep -q "unsigned short to_bf16(float f)" "$tmp/bf16/device0.cu" || { echo "FAIL: no bf16 conversion"; failures=$((failures + 1)); }
expect 2 "bad --arch for run" -- "$alexc" run specs/mini-alexnet.yaml --seed 1 --random 1 --target cuda --arch ampere
expect 2 "--compare-ref without cuda" -- "$alexc" run specs/mini-alexnet.yaml --seed 1 --random 1 --compare-ref
expect 0 "bench help" -- "$alexc" bench --help
contains "--compare-unfused" "bench help"
expect 2 "bench without target" -- "$alexc" bench specs/mini-alexnet.yaml
expect 2 "bench bad batch" -- "$alexc" bench specs/mini-alexnet.yaml --target cuda --batch 0
expect 1 "bench missing spec" -- "$alexc" bench "$tmp/nope.yaml" --target cuda

expect 0 "emit source, 2 devices" -- "$alexc" compile specs/alexnet-torchvision.yaml --target cuda \
  --devices 2 --emit-source "$tmp/src"
[ -s "$tmp/src/device0.cu" ] && [ -s "$tmp/src/device1.cu" ] || { echo "FAIL: no device sources"; failures=$((failures + 1)); }
grep -q 'void k01_features_0(' "$tmp/src/device0.cu" || { echo "FAIL: kernel names not sanitized"; failures=$((failures + 1)); }

if "$alexc" compile specs/mini-alexnet.yaml --target cuda -o "$tmp/probe.plan" >/dev/null 2>&1; then
  expect 0 "compile mini-alexnet" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda --devices 2 -o "$tmp/m.plan"
  head -c 17 "$tmp/m.plan" | grep -q "alexc-cuda-plan 7" || { echo "FAIL: artifact header"; failures=$((failures + 1)); }
  grep -a -q "^chunk 0 conv1 " "$tmp/m.plan" || { echo "FAIL: no conv chunk in the plan"; failures=$((failures + 1)); }
  grep -a -q "^gemm 0 conv1 fp32 N N " "$tmp/m.plan" || { echo "FAIL: no conv gemm in the plan"; failures=$((failures + 1)); }
  expect 0 "compile bf16" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda --precision bf16 -o "$tmp/bf16.plan"
  grep -a -q "^precision bf16$" "$tmp/bf16.plan" || { echo "FAIL: no precision line"; failures=$((failures + 1)); }
  grep -a -q "^gemm 0 fc5 bf16 T N " "$tmp/bf16.plan" || { echo "FAIL: no bf16 fc gemm"; failures=$((failures + 1)); }
  grep -a -q "^slice 0 [0-9]* 0 [0-9]* bf16 conv1.weight$" "$tmp/bf16.plan" || { echo "FAIL: no bf16 weight slice"; failures=$((failures + 1)); }
  # --conv fused: the kernel line carries the dynamic shared memory the source sizes.
  expect 0 "compile --conv fused" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda --conv fused \
    -o "$tmp/fused.plan" --emit-source "$tmp/fusedsrc"
  want=$(grep -m1 -o "static_assert(SMEM_BYTES == [0-9]*" "$tmp/fusedsrc/device0.cu" | grep -o "[0-9]*$")
  got=$(grep -a -m1 "^kernel 0 k01_conv1 " "$tmp/fused.plan" | awk '{print $7}')
  [ -n "$want" ] && [ "$got" = "$want" ] || { echo "FAIL: conv1's kernel line gives $got bytes of dynamic shared memory, the source $want"; failures=$((failures + 1)); }
  n=$(ls "$tmp/cache" | wc -l)
  [ "$n" -ge 4 ] || { echo "FAIL: the NVRTC cache holds $n files, want CUBIN + PTX per device"; failures=$((failures + 1)); }
  expect 0 "compile again (cached)" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda --devices 2 -o "$tmp/m2.plan"
  cmp -s "$tmp/m.plan" "$tmp/m2.plan" || { echo "FAIL: the cached compile differs"; failures=$((failures + 1)); }
else
  echo "skip: this alexc has no NVRTC"
fi

# Without a GPU (this test forces it by hiding the driver), --target cuda explains itself.
if ! ls /dev/nvidia0 >/dev/null 2>&1; then
  # wide.yaml ends at a pool fused into conv1's node: run must still know that layer's
  # name (it read freed memory once, and said "not layer '<garbage>'").
  for cmd in "run specs/mini-alexnet.yaml --seed 1 --random 1 --target cuda" \
             "run $tmp/wide.yaml --seed 1 --random 1 --target cuda" \
             "bench specs/mini-alexnet.yaml --target cuda --batch 2" \
             "compile specs/mini-alexnet.yaml --target cuda --arch native --emit-source $tmp/n"; do
    # shellcheck disable=SC2086
    expect 1 "$cmd without a GPU" -- "$alexc" $cmd
    if ! grep -q -e "no CUDA driver found" -e "no GPU" -e "built without the CUDA toolkit" "$tmp/out"; then
      echo "FAIL: no clear message:"; cat "$tmp/out"; failures=$((failures + 1))
    fi
  done
fi
expect 1 "compile --layer unknown" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda --layer nope --emit-source "$tmp/cut"
contains "no layer 'nope'" "compile --layer unknown"
expect 0 "compile --layer pool2" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda --layer pool2 --emit-source "$tmp/cut"
grep -q "k02_conv2" "$tmp/cut/device0.cu" && ! grep -q "conv3" "$tmp/cut/device0.cu" ||
  { echo "FAIL: compile --layer pool2 does not end the network at pool2"; failures=$((failures + 1)); }
expect 1 "run --target cuda --layer of the input" -- "$alexc" run specs/mini-alexnet.yaml --seed 1 --random 1 --target cuda --layer input
contains "is the network's input" "run --target cuda --layer of the input"
expect 2 "unknown run target" -- "$alexc" run specs/mini-alexnet.yaml --seed 1 --random 1 --target tpu

echo "$failures failure(s)"
[ $failures -eq 0 ]
