#!/bin/bash
# The model bundle (alexc compile -o MODEL.so) and alexrt, the runtime's runner:
# the .so exports alexc_model_v1 and nothing else, needs nothing and runs nothing at
# load; its payload is the plan file byte for byte; `alexrt info` reads both alike;
# `alexrt run` explains a missing GPU and refuses bad weights, inputs and models with
# one clear line; a failed compile leaves nothing behind.
# With the fake CUDA driver of tests/cuda/fake/ (the optional arguments), `alexrt run`
# runs a bundle on the CPU: its output against the reference executor, --batch-check.
# The checks that need a compiled model skip (exit 77 at the end) without NVRTC.
#
# usage: tests/cuda/bundle.sh ALEXC ALEXRT TEST_BUNDLE [FAKE_LIB_DIR CXX EMU_HEADER]
set -u
alexc=$1 alexrt=$2 test_bundle=$3
fake_lib=${4:-} cxx=${5:-} emu_header=${6:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export ALEXC_CACHE=$tmp/cache
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
expect() {  # expect WANT_RC DESCRIPTION -- COMMAND...; stdout in $tmp/out, stderr in $tmp/err
  local want=$1 what=$2
  shift 3
  "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  if [ $rc -ne "$want" ]; then
    fail "$what: exit $rc, want $want"; cat "$tmp/out" "$tmp/err"
  else
    echo "ok: $what"
  fi
}
one_error() {  # one_error PREFIX TEXT DESCRIPTION: stderr is one line "PREFIX: error: ...TEXT..."
  local lines
  lines=$(wc -l <"$tmp/err")
  if [ "$lines" -ne 1 ] || ! grep -q "^$1: error: .*$2" "$tmp/err"; then
    fail "$3: want one line '$1: error: ...$2...', got:"; cat "$tmp/err"
  fi
}

# ---- alexrt without a model from alexc
expect 0 "alexrt --help" -- "$alexrt" --help
expect 0 "alexrt run --help" -- "$alexrt" run --help
grep -q -- "--batch-check" "$tmp/out" || fail "run --help lacks --batch-check"
expect 0 "alexrt info --help" -- "$alexrt" info --help
expect 2 "alexrt, no command" -- "$alexrt"
expect 2 "alexrt, unknown command" -- "$alexrt" frobnicate
expect 2 "alexrt run, no model" -- "$alexrt" run --weights w --input x
expect 2 "alexrt run, no --weights" -- "$alexrt" run m.so --input x
expect 2 "alexrt info, two models" -- "$alexrt" info a b
expect 2 "alexrt run, unknown option" -- "$alexrt" run m.so --weights w --input x --fast

expect 1 "info: no such file" -- "$alexrt" info "$tmp/nope.so"
one_error alexrt "cannot open" "no such file"
printf 'hello, world\n' >"$tmp/garbage.plan"
expect 1 "info: garbage" -- "$alexrt" info "$tmp/garbage.plan"
one_error alexrt "not an alexc CUDA plan" "garbage"
head -c 4096 /dev/urandom >"$tmp/random.plan"
expect 1 "info: random bytes" -- "$alexrt" info "$tmp/random.plan"
one_error alexrt "" "random bytes"

# Shared objects that are not models, built here with the C compiler.
cc=${CC:-cc}
cat >"$tmp/other.c" <<'EOF'
int not_a_model(void) { return 42; }
EOF
cat >"$tmp/liar.c" <<'EOF'
const unsigned char *alexc_model_v1(unsigned long long *size) {
  static const unsigned char junk[] = "alexc-cuda-plan but not really\n";
  *size = sizeof junk;
  return junk;
}
EOF
cat >"$tmp/empty.c" <<'EOF'
const unsigned char *alexc_model_v1(unsigned long long *size) { *size = 0; return 0; }
EOF
for lib in other liar empty; do
  $cc -shared -fPIC -o "$tmp/$lib.so" "$tmp/$lib.c" || fail "cannot build $lib.so with $cc"
done
expect 1 "info: a .so without alexc_model_v1" -- "$alexrt" info "$tmp/other.so"
one_error alexrt "not an alexc model (no alexc_model_v1)" "a .so without the entry point"
expect 1 "info: a .so whose payload is junk" -- "$alexrt" info "$tmp/liar.so"
one_error alexrt "not an alexc CUDA plan" "junk payload"
expect 1 "info: a .so returning nothing" -- "$alexrt" info "$tmp/empty.so"
one_error alexrt "returned no model" "empty payload"
head -c 200 "$tmp/other.so" >"$tmp/truncated.so"
expect 1 "info: a truncated .so" -- "$alexrt" info "$tmp/truncated.so"
one_error alexrt "cannot load the bundle" "truncated .so"
(cd "$tmp" && cp other.so bare.so && "$alexrt" info bare.so >out 2>err)
grep -q "not an alexc model" "$tmp/err" || { fail "a bare file name is not loaded from ./"; cat "$tmp/err"; }

# ---- bundles from alexc (NVRTC needed)
if ! "$alexc" compile specs/mini-alexnet.yaml --target cuda -o "$tmp/probe.plan" >"$tmp/err" 2>&1; then
  cat "$tmp/err"
  echo "$failures failure(s); the rest needs NVRTC: skipped"
  [ $failures -eq 0 ] && exit 77
  exit 1
fi

for devices in 1 2; do
  so=$tmp/m$devices.so plan=$tmp/m$devices.plan
  expect 0 "compile -o .so, $devices device(s)" -- "$alexc" compile specs/mini-alexnet.yaml \
    --target cuda --devices $devices -o "$so"
  grep -q -- "-> $so" "$tmp/out" || fail "compile does not name the .so: $(cat "$tmp/out")"
  expect 0 "compile -o plan, $devices device(s)" -- "$alexc" compile specs/mini-alexnet.yaml \
    --target cuda --devices $devices -o "$plan"
  head -c 4 "$so" | grep -q "ELF" || fail "$so is not ELF"
  head -c 15 "$plan" | grep -q "alexc-cuda-plan" || fail "$plan is not a plan file"

  # One exported symbol, nothing undefined, nothing needed, nothing run at load.
  nm -D --defined-only "$so" | grep -qw alexc_model_v1 || fail "no alexc_model_v1 in nm -D"
  undefined=$(nm -D --undefined-only "$so")
  [ -z "$undefined" ] || fail "undefined symbols: $undefined"
  if readelf -d "$so" | grep -E "\((NEEDED|INIT|INIT_ARRAY|FINI|FINI_ARRAY|PREINIT_ARRAY|TEXTREL)\)"; then
    fail "the bundle needs libraries or runs code at load"
  fi
  readelf -S -W "$so" | grep -q " \.rodata " || fail "no .rodata section"

  expect 0 "info .so" -- "$alexrt" info "$so"
  tail -n +2 "$tmp/out" >"$tmp/info.so"
  grep -q "^devices *$devices" "$tmp/info.so" || fail "info: devices"
  grep -q "^network *mini_alexnet" "$tmp/info.so" || fail "info: network"
  grep -q "^device 0 *arena" "$tmp/info.so" || fail "info: device 0"
  grep -q "^input *1x28x28 (784 floats per image)" "$tmp/info.so" || fail "info: input"
  # alexc check's parameter count of mini-alexnet
  grep -q "^weights *12 tensors, 161578 parameters" "$tmp/info.so" || fail "info: weights"
  expect 0 "info plan" -- "$alexrt" info "$plan"
  tail -n +2 "$tmp/out" >"$tmp/info.plan"
  cmp -s "$tmp/info.so" "$tmp/info.plan" || { fail "info differs:"; diff "$tmp/info.so" "$tmp/info.plan"; }

  expect 0 "payload = plan file ($devices device(s))" -- "$test_bundle" "$plan" "$so"
  grep -q "^FAIL" "$tmp/out" && cat "$tmp/out"
done

# A bare name loads from the current directory.
(cd "$tmp" && "$alexrt" info m1.so >out 2>err) || { fail "info on a bare name:"; cat "$tmp/err"; }

# A truncated real bundle.
head -c 5000 "$tmp/m1.so" >"$tmp/cut.so"
expect 1 "info: a truncated bundle" -- "$alexrt" info "$tmp/cut.so"
one_error alexrt "cannot load the bundle" "truncated bundle"
# A plan cut short, and one with a garbage line.
head -c 3000 "$tmp/m1.plan" >"$tmp/cut.plan"
expect 1 "info: a truncated plan" -- "$alexrt" info "$tmp/cut.plan"
one_error alexrt "cut short" "truncated plan"
# A plan of an older format says so.
LC_ALL=C sed '1s/^alexc-cuda-plan [0-9]*$/alexc-cuda-plan 3/' "$tmp/m1.plan" >"$tmp/old.plan"
expect 1 "info: a plan of an older format" -- "$alexrt" info "$tmp/old.plan"
one_error alexrt "a plan of format 3; this runtime reads format [0-9]*: compile the model again" "old plan"
# A slice of a tensor the plan does not declare, or beyond its shape.
LC_ALL=C sed '/^tensor conv1.weight /d' "$tmp/m1.plan" >"$tmp/undeclared.plan"
expect 1 "info: a slice of an undeclared tensor" -- "$alexrt" info "$tmp/undeclared.plan"
one_error alexrt "plan line [0-9]*: malformed" "undeclared tensor"
LC_ALL=C sed 's/^tensor conv1.weight .*/tensor conv1.weight 2x1x5x5/' "$tmp/m1.plan" >"$tmp/small.plan"
expect 1 "info: a slice beyond its tensor" -- "$alexrt" info "$tmp/small.plan"
one_error alexrt "plan line [0-9]*: malformed" "slice beyond its tensor"
{ head -n 1 "$tmp/m1.plan"; echo "network x"; echo "frobnicate 1 2 3"; } >"$tmp/bad.plan"
expect 1 "info: a plan with a garbage line" -- "$alexrt" info "$tmp/bad.plan"
one_error alexrt "malformed" "garbage line"

# Failed compiles leave nothing behind, and keep what was there.
expect 1 "compile -o into a missing directory" -- "$alexc" compile specs/mini-alexnet.yaml \
  --target cuda -o "$tmp/no/such/dir/m.so"
one_error alexc "No such file or directory" "missing directory"
[ ! -e "$tmp/no" ] || fail "compile created $tmp/no"
mkdir "$tmp/out-dir"
echo old >"$tmp/out-dir/m.so"
expect 1 "compile with a failing linker" -- env CC=false "$alexc" compile \
  specs/mini-alexnet.yaml --target cuda -o "$tmp/out-dir/m.so"
one_error alexc "linking the bundle failed .*: false -shared -nostdlib -o" "failing linker"
expect 1 "compile without a linker" -- env CC=/nonexistent/cc "$alexc" compile \
  specs/mini-alexnet.yaml --target cuda -o "$tmp/out-dir/m.so"
one_error alexc "cannot run the linker '/nonexistent/cc'" "missing linker"
[ "$(cat "$tmp/out-dir/m.so")" = old ] || fail "a failed compile overwrote m.so"
[ "$(ls "$tmp/out-dir")" = m.so ] || fail "a failed compile left files: $(ls "$tmp/out-dir")"
expect 0 "compile over an existing .so" -- "$alexc" compile specs/mini-alexnet.yaml \
  --target cuda -o "$tmp/out-dir/m.so"
[ "$(ls "$tmp/out-dir")" = m.so ] || fail "temporary files left: $(ls "$tmp/out-dir")"
cmp -s "$tmp/out-dir/m.so" "$tmp/m1.so" || fail "the same compile gave a different .so"
expect 0 "CC with arguments" -- env CC="cc -O2" "$alexc" compile specs/mini-alexnet.yaml \
  --target cuda -o "$tmp/out-dir/m.so"

# ---- alexrt run: weights and inputs are checked before any GPU is needed
"$alexc" init specs/mini-alexnet.yaml --seed 1 -o "$tmp/w.safetensors" >/dev/null || fail "init"
"$alexc" input specs/mini-alexnet.yaml --seed 2 --batch 3 -o "$tmp/x.npy" >/dev/null || fail "input"
sed 's/name: fc6,/name: fc9,/' specs/mini-alexnet.yaml >"$tmp/renamed.yaml"
sed 's/name: conv1, op: conv, out: 32/name: conv1, op: conv, out: 16/' specs/mini-alexnet.yaml >"$tmp/narrow.yaml"
sed 's/height: 28, width: 28/height: 32, width: 32/' specs/mini-alexnet.yaml >"$tmp/big.yaml"
"$alexc" init "$tmp/renamed.yaml" --seed 1 -o "$tmp/renamed.safetensors" >/dev/null || fail "init renamed"
"$alexc" init "$tmp/narrow.yaml" --seed 1 -o "$tmp/narrow.safetensors" >/dev/null || fail "init narrow"
"$alexc" input "$tmp/big.yaml" --seed 2 --batch 2 -o "$tmp/big.npy" >/dev/null || fail "input big"

m=$tmp/m2.so
expect 1 "run: a weight tensor missing" -- "$alexrt" run "$m" --weights "$tmp/renamed.safetensors" --input "$tmp/x.npy"
one_error alexrt "no tensor 'fc6\.\(weight\|bias\)' (the model needs it)" "missing tensor"
expect 1 "run: a weight tensor of the wrong size" -- "$alexrt" run "$m" --weights "$tmp/narrow.safetensors" --input "$tmp/x.npy"
one_error alexrt "tensor 'conv1\.\(weight' has shape (16, 1, 5, 5); the model wants (32, 1, 5, 5)\|bias' has shape (16,); the model wants (32,)\)" "wrong size"
# As many elements as the model wants, transposed (an fc weight stored (in, out)): refused.
LC_ALL=C sed 's/"fc6.weight":{"dtype":"F32","shape":\[10,256\]/"fc6.weight":{"dtype":"F32","shape":[256,10]/' \
  "$tmp/w.safetensors" >"$tmp/transposed.safetensors"
cmp -s "$tmp/w.safetensors" "$tmp/transposed.safetensors" && fail "transposed.safetensors: the header was not rewritten"
expect 1 "run: a weight tensor transposed" -- "$alexrt" run "$m" --weights "$tmp/transposed.safetensors" --input "$tmp/x.npy"
one_error alexrt "tensor 'fc6\.weight' has shape (256, 10); the model wants (10, 256)" "transposed weight"
expect 1 "run: an input of the wrong size" -- "$alexrt" run "$m" --weights "$tmp/w.safetensors" --input "$tmp/big.npy"
one_error alexrt "input shape (2, 1, 32, 32) does not fit the model: it wants (N, 1, 28, 28) with N from 1 to 1048576, or one image (1, 28, 28)" "input size"
# As many floats as the model wants, in another layout (N, H, W, C): refused, not reread.
LC_ALL=C sed 's/(3, 1, 28, 28)/(3, 28, 28, 1)/' "$tmp/x.npy" >"$tmp/nhwc.npy"
cmp -s "$tmp/x.npy" "$tmp/nhwc.npy" && fail "nhwc.npy: the header was not rewritten"
expect 1 "run: an input in NHWC" -- "$alexrt" run "$m" --weights "$tmp/w.safetensors" --input "$tmp/nhwc.npy"
one_error alexrt "input shape (3, 28, 28, 1) does not fit the model" "NHWC input"
expect 1 "run: no weights file" -- "$alexrt" run "$m" --weights "$tmp/none.safetensors" --input "$tmp/x.npy"
one_error alexrt "cannot open" "no weights file"
expect 1 "run: weights that are not safetensors" -- "$alexrt" run "$m" --weights "$tmp/x.npy" --input "$tmp/x.npy"
one_error alexrt "" "bad weights file"

# Without a GPU (no /dev/nvidia0), run says so; with one, it runs.
if ! ls /dev/nvidia0 >/dev/null 2>&1; then
  expect 1 "run without a GPU" -- "$alexrt" run "$m" --weights "$tmp/w.safetensors" --input "$tmp/x.npy"
  one_error alexrt "no CUDA driver found\|no GPU\|built without the CUDA toolkit" "no GPU"
else
  expect 0 "run on the GPU" -- "$alexrt" run "$m" --weights "$tmp/w.safetensors" \
    --input "$tmp/x.npy" --output "$tmp/y.npy" --batch-check
  grep -q "batch check: each of the 3" "$tmp/out" || fail "no batch check: $(cat "$tmp/out")"
fi

# On the fake driver: the bundle's output is the reference executor's.
if [ -n "$fake_lib" ]; then
  # The fake builds the kernels for the CPU from the sources in alexc's NVRTC cache.
  export ALEXC_CACHE=$tmp/cache ALEXC_FAKE_CUDA_CACHE=$tmp/cache
  export ALEXC_FAKE_CUDA_MODULES=$tmp/modules ALEXC_FAKE_CUDA_EMU=$emu_header
  export ALEXC_FAKE_CUDA_CXX=$cxx
  "$alexc" run specs/mini-alexnet.yaml --weights "$tmp/w.safetensors" --input "$tmp/x.npy" \
    --output "$tmp/ref.npy" >/dev/null || fail "the reference run"
  for devices in 1 2; do
    expect 0 "compile for the fake driver, $devices device(s)" -- "$alexc" compile \
      specs/mini-alexnet.yaml --target cuda --devices $devices -o "$tmp/fake$devices.so"
    for gpus in $(seq 1 $devices); do
      rm -f "$tmp/y.npy"
      expect 0 "run on the fake driver, $devices device(s), $gpus GPU(s)" -- \
        env LD_LIBRARY_PATH="$fake_lib" ALEXC_FAKE_CUDA_GPUS=$gpus "$alexrt" run \
        "$tmp/fake$devices.so" --weights "$tmp/w.safetensors" --input "$tmp/x.npy" \
        --output "$tmp/y.npy" --batch-check
      grep -q "batch check: each of the 3 image(s)" "$tmp/out" || fail "no batch check: $(cat "$tmp/out")"
      expect 0 "its output is the reference's" -- "$alexc" compare "$tmp/y.npy" "$tmp/ref.npy"
    done
  done
  # A network cut at a conv layer: the output is saved in its shape, (N, C, H, W).
  expect 0 "compile cut at conv2" -- "$alexc" compile specs/mini-alexnet.yaml --target cuda \
    --layer conv2 -o "$tmp/conv2.plan"
  "$alexc" run specs/mini-alexnet.yaml --weights "$tmp/w.safetensors" --input "$tmp/x.npy" \
    --layer conv2 --output "$tmp/ref-conv2.npy" >/dev/null || fail "the reference run to conv2"
  expect 0 "run cut at conv2 on the fake driver" -- env LD_LIBRARY_PATH="$fake_lib" "$alexrt" \
    run "$tmp/conv2.plan" --weights "$tmp/w.safetensors" --input "$tmp/x.npy" \
    --output "$tmp/y-conv2.npy"
  head -c 128 "$tmp/y-conv2.npy" | grep -aq "'shape': (3, 64, 13, 13)" ||
    fail "the conv2 output is not saved as (3, 64, 13, 13)"
  expect 0 "its output is the reference's at conv2" -- "$alexc" compare "$tmp/y-conv2.npy" \
    "$tmp/ref-conv2.npy"
  expect 0 "run on the fake driver, top classes" -- env LD_LIBRARY_PATH="$fake_lib" "$alexrt" \
    run "$tmp/fake1.so" --weights "$tmp/w.safetensors" --input "$tmp/x.npy"
  [ "$(grep -c "^image [0-2]: top class" "$tmp/out")" -eq 3 ] || fail "top classes: $(cat "$tmp/out")"
fi

echo "$failures failure(s)"
[ $failures -eq 0 ]
