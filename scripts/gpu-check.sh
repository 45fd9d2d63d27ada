#!/usr/bin/env bash
# The GPU check, for a session that has the device machine (an H100/H200 with the CUDA
# driver and PyTorch; no libyaml, libcjson, libprotobuf-c or LLVM). Build here, carry the
# binaries, the libraries they need and the peer script, run everything there in one go:
#
#   here:   scripts/gpu-check.sh prep      # build-gpu/alexc and alexrt (no LLVM), build-gpu/devlibs
#   there:  device run, carry ["build-gpu/alexc", "build-gpu/alexrt", "build-gpu/devlibs",
#           "build-gpu/tests/test_train_fake"],
#           command: scripts/gpu-check.sh run   (timeout_s 600)
#   here, first: scripts/gpu-check.sh rehearse  # the same phases against the fake driver
#
# `run` is one ordered script. Each phase prints its elapsed time; a phase that fails
# stops the check (the later ones are listed as not run), and a phase that would start
# with less than its share of the time budget left ($ALEXC_CHECK_BUDGET seconds, default
# 540: a device command may run 600) is skipped. The table at the end has a line per
# phase:
#
#   env        nvidia-smi, and where libcuda, libcublas, libnvrtc and <mma.h> were found
#   logits     the network cut before its softmax (--layer), each --conv strategy and
#              precision and two devices, against the reference executor
#   sanitize   compute-sanitizer memcheck, racecheck, synccheck, initcheck on small cases
#   batch      AlexNet at batch 128 (one device: 4 chunks of 32; two: 48, 48 and a short
#              32), every image also run alone (alexrt --batch-check)
#   train      two SGD steps of mini-AlexNet on the GPU (one device, then the two-device
#              split) through runtime/cuda.c against the reference (test_train_fake, the
#              binary cuda.train_fake runs on the fake driver)
#   timings    alexc bench in each precision and layout, PyTorch's peers beside them
#   ncu        Nsight Compute on the kernels of the fp32 bench's three heaviest layers
#
# A tool that is not there (nvidia-smi, compute-sanitizer, ncu, the peer script) makes
# its line "skipped: not found" instead of a failure: so the rehearsal, which has none,
# runs every phase's control flow. Everything also lands in $OUT (default gpu-check-out).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

usage() {
  echo "usage: scripts/gpu-check.sh prep | run | rehearse" >&2
  exit 2
}

prep() {
  scripts/deps.sh
  # No LLVM: libLLVM alone is bigger than what travels to the device machine.
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DALEXC_LLVM=OFF >/dev/null || exit 1
  cmake --build build-gpu -j"${JOBS:-2}" --target alexc alexrt_cli test_train_fake || exit 1
  mkdir -p build-gpu/devlibs
  # The shared libraries alexc needs that the device machine may lack (the runtime decodes
  # photos with libjpeg and libpng; `alexc import` parses ONNX with libprotobuf-c).
  for lib in libyaml-0.so.2 libcjson.so.1 libjpeg.so.62 libpng16.so.16 libprotobuf-c.so.1; do
    cp -L "$(ldconfig -p | awk -v l="$lib" '$1 == l { print $NF; exit }')" build-gpu/devlibs/ || exit 1
  done
  cp ../shared/bench/torch_peers.py build-gpu/devlibs/ 2>/dev/null ||
    echo "note: ../shared/bench/torch_peers.py not found: no peer timings" >&2
  ls -la build-gpu/alexc build-gpu/alexrt build-gpu/tests/test_train_fake build-gpu/devlibs
}

# ---------------------------------------------------------------- settings

mode=${1:-}
case $mode in
prep) prep; exit $? ;;
run | rehearse) ;;
*) usage ;;
esac
out=${OUT:-$PWD/gpu-check-out}
mkdir -p "$out"
budget=540
export ALEXC_CACHE="${TMPDIR:-/tmp}/alexc-cache"
if [ "$mode" = rehearse ]; then
  # The same phases here, against the fake CUDA driver of tests/cuda/fake/ (built in
  # build/ by scripts/test.sh or cmake), on the small spec: a change to this script is
  # tried before the GPU's minutes are spent. Each case is a g++ build of its kernels,
  # so the rehearsal runs fewer of them.
  alexc=${ALEXC:-build/alexc}
  alexrt=${ALEXRT:-$(dirname "$alexc")/alexrt}
  train_bin=$(dirname "$alexc")/tests/test_train_fake
  fake=$(dirname "$alexc")/tests/fake-cuda
  # No fake driver (a build without the CUDA toolkit): nothing to rehearse with; 77 is
  # ctest's "skipped".
  [ -f "$fake/libcuda.so.1" ] || { echo "rehearse: no fake driver in $fake" >&2; exit 77; }
  ALEXC_CACHE=$(mktemp -d)
  trap 'rm -rf "$ALEXC_CACHE"' EXIT
  export LD_LIBRARY_PATH="$fake" ALEXC_FAKE_CUDA_MODULES="$ALEXC_CACHE/modules" \
    ALEXC_FAKE_CUDA_CACHE="$ALEXC_CACHE" ALEXC_FAKE_CUDA_EMU="$PWD/tests/cuda/cuda_emu.h"
  mkdir -p "$ALEXC_FAKE_CUDA_MODULES"
  spec=specs/mini-alexnet.yaml small=specs/mini-alexnet.yaml batch=4 big_batch=4 runs=2 warmup=1
  variants=("gemm fp32" "fused tf32")
  bench_cases=("fp32|--precision fp32 --compare-unfused" "fp32-2dev|--devices 2")
  peers=build-gpu/devlibs/torch_peers.py.rehearse-has-none
  budget=1200  # the CPU builds of the kernels are slow; every phase should run here
else
  alexc=${ALEXC:-build-gpu/alexc}
  alexrt=${ALEXRT:-build-gpu/alexrt}
  train_bin=build-gpu/tests/test_train_fake
  export LD_LIBRARY_PATH="$PWD/build-gpu/devlibs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
  # NVRTC's headers (<mma.h> for the tensor-core kernels) from this machine's toolkit.
  if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then
    CUDA_HOME=$(dirname "$(dirname "$(command -v nvcc)")")
    export CUDA_HOME
  fi
  spec=specs/alexnet.yaml small=specs/mini-alexnet.yaml batch=4 big_batch=128 runs=20 warmup=3
  variants=("gemm fp32" "direct fp32" "implicit fp32" "fused fp32" "gemm tf32" "implicit tf32"
            "fused tf32" "gemm bf16" "fused bf16")
  bench_cases=("fp32|--precision fp32 --compare-unfused" "tf32|--precision tf32"
               "bf16|--precision bf16" "fp32-implicit|--conv implicit" "fp32-convfused|--conv fused"
               "tf32-convfused|--conv fused --precision tf32" "fp32-2dev|--devices 2")
  peers=build-gpu/devlibs/torch_peers.py
fi

budget=${ALEXC_CHECK_BUDGET:-$budget}

# ---------------------------------------------------------------- phases

start=$SECONDS
table=() stopped=
row() { table+=("$(printf '%-9s %-8s %5s s  %s' "$1" "$2" "$3" "$4")"); }  # PHASE STATUS SECONDS NOTE
elapsed() { echo $((SECONDS - start)); }
left() { echo $((budget - (SECONDS - start))); }
limit() { local l; l=$(left); echo $((l > 5 ? l : 5)); }  # for timeout, where 0 means none
found() { command -v "$1" >/dev/null 2>&1; }

# phase NAME SHARE: run phase_NAME if no earlier phase failed and SHARE seconds of the
# budget are left. A phase prints its own lines, returns 0 (passed), 1 (failed: the check
# stops) or 3 (skipped, with its reason in $note).
phase() {
  local name=$1 share=$2 t0=$SECONDS rc
  note=
  if [ -n "$stopped" ]; then
    row "$name" "not run" 0 "$stopped failed"
    return
  fi
  if [ "$(left)" -lt "$share" ]; then
    row "$name" skipped 0 "time budget: $(left) s left, the phase wants $share"
    return
  fi
  echo "== $name (at $(elapsed) s)"
  "phase_$name"
  rc=$?
  echo "== $name: $((SECONDS - t0)) s"
  case $rc in
  0) row "$name" ok $((SECONDS - t0)) "$note" ;;
  3) row "$name" skipped $((SECONDS - t0)) "$note" ;;
  *) row "$name" FAILED $((SECONDS - t0)) "$note (see $out/$name.txt)"; stopped=$name ;;
  esac
}

# A library's path as the dynamic loader finds it (LD_LIBRARY_PATH first), or "not found".
where_lib() {
  local dir
  for dir in ${LD_LIBRARY_PATH//:/ }; do
    [ -e "$dir/$1" ] && { echo "$dir/$1"; return; }
  done
  ldconfig -p 2>/dev/null | awk -v l="$1" '$1 == l { print $NF; found = 1; exit } END { if (!found) print "not found" }'
}

phase_env() {
  {
    if found nvidia-smi; then
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    else
      echo "nvidia-smi: skipped: not found"
    fi
    echo "libcuda.so.1:    $(where_lib libcuda.so.1)"
    echo "libcublas.so.13: $(where_lib libcublas.so.13)"
    echo "libcublasLt.so.13: $(where_lib libcublasLt.so.13)"
    echo "libnvrtc:        $(where_lib libnvrtc.so.13)"
    local mma=not-found dir
    for dir in "${CUDA_HOME:-}/include" /usr/local/cuda/include; do
      [ -f "$dir/mma.h" ] && { mma=$dir/mma.h; break; }
    done
    echo "mma.h:           $mma"
  } | tee "$out/env.txt"
  found nvidia-smi || note="nvidia-smi skipped: not found"
  ! grep -q "libcuda.so.1: *not found" "$out/env.txt"
}

# The layer before the softmax: where the logits are compared (the softmax squashes
# differences in them).
logits_layer() {
  "$alexc" check "$1" | awk 'NR > 3 && $1 != "total" && NF >= 3 { if ($2 == "softmax") { print prev; exit } prev = $1 }'
}

phase_logits() {
  local layer conv prec opts dir=$out/logits result
  layer=$(logits_layer "$spec")
  [ -n "$layer" ] || { note="no softmax in $spec"; return 1; }
  mkdir -p "$dir"
  {
    echo "$spec at $layer, batch $batch"
    "$alexc" run "$spec" --seed 1 --scheme fan-in --random "$batch" --no-fuse --layer "$layer" \
      --output "$dir/ref.npy" >/dev/null || { echo "the reference run failed"; return 1; }
    for v in "${variants[@]}" "gemm fp32 --devices 2" "fused tf32 --devices 2"; do
      read -r conv prec opts <<<"$v"
      result=
      # shellcheck disable=SC2086
      if "$alexc" run "$spec" --seed 1 --scheme fan-in --random "$batch" --target cuda \
        --conv "$conv" --precision "$prec" $opts --layer "$layer" --output "$dir/gpu.npy" \
        >"$dir/run.txt" 2>&1 &&
        result=$("$alexc" compare "$dir/gpu.npy" "$dir/ref.npy" --precision "$prec" 2>&1); then
        printf '  %-9s %-5s %-12s %s\n' "$conv" "$prec" "${opts:-1 device}" "$result"
      else
        printf '  %-9s %-5s %-12s %s FAIL\n' "$conv" "$prec" "${opts:-1 device}" "${result:-$(tail -1 "$dir/run.txt")}"
      fi
    done
  } 2>&1 | tee "$out/logits.txt"
  note="$spec at $(logits_layer "$spec"): $(grep -c ' OK$' "$out/logits.txt") ok, $(grep -c ' FAIL$' "$out/logits.txt") failed"
  ! grep -q -e ' FAIL$' -e 'failed$' "$out/logits.txt"
}

phase_sanitize() {
  if ! found compute-sanitizer; then
    note="compute-sanitizer skipped: not found"
    echo "$note" | tee "$out/sanitize.txt"
    return 3
  fi
  # Small cases: each tool on the cuBLAS path and on the shared-memory tensor-core kernels.
  local tool opts log n=0
  for tool in memcheck racecheck synccheck initcheck; do
    for opts in "--conv gemm --precision fp32" "--conv fused --precision tf32 --devices 2"; do
      n=$((n + 1)) log=$out/sanitize-$tool-$n.txt
      # shellcheck disable=SC2086
      if timeout "$(limit)" compute-sanitizer --tool "$tool" --error-exitcode 9 \
        "$alexc" run "$small" --seed 1 --random 2 --target cuda $opts >"$log" 2>&1; then
        echo "  $tool $opts: OK"
      else
        echo "  $tool $opts: FAIL"
        grep -m 20 -e "=========" "$log" | sed 's/^/    /'
      fi
    done
  done 2>&1 | tee "$out/sanitize.txt"
  note="4 tools x 2 cases on $small"
  ! grep -q ': FAIL$' "$out/sanitize.txt"
}

phase_batch() {
  local dir=$out/batch opts
  mkdir -p "$dir"
  {
    if ! "$alexc" init "$spec" --seed 1 -o "$dir/w.safetensors" >/dev/null ||
      ! "$alexc" input "$spec" --seed 2 --batch "$big_batch" -o "$dir/x.npy" >/dev/null; then
      echo "weights or input: FAIL"
      return 1
    fi
    for opts in "" "--devices 2"; do
      # shellcheck disable=SC2086
      if "$alexc" compile "$spec" --target cuda $opts -o "$dir/model.plan" >"$dir/run.txt" 2>&1 &&
        "$alexrt" run "$dir/model.plan" --weights "$dir/w.safetensors" --input "$dir/x.npy" \
          --batch-check >>"$dir/run.txt" 2>&1; then
        echo "  ${opts:-1 device}: chunks of $(grep -a '^device ' "$dir/model.plan" | awk '{ print $10 }' | paste -sd/) images; $(grep -m1 '^batch check' "$dir/run.txt"): OK"
      else
        echo "  ${opts:-1 device}: $(tail -3 "$dir/run.txt" | tr '\n' ' ') FAIL"
      fi
    done
  } 2>&1 | tee "$out/batch.txt"
  note="batch $big_batch, every image alone against the batch"
  ! grep -q 'FAIL' "$out/batch.txt"
}

phase_train() {
  local devices
  if [ ! -x "$train_bin" ]; then
    note="$train_bin not found (scripts/gpu-check.sh prep builds it)"
    echo "$note" | tee "$out/train.txt"
    return 3
  fi
  {
    for devices in 1 2; do
      if timeout "$(limit)" "$train_bin" specs/mini-alexnet.yaml "$devices"; then
        echo "mini-alexnet, $devices device(s): two SGD steps against the reference: OK"
      else
        echo "mini-alexnet, $devices device(s): FAIL"
      fi
    done
  } 2>&1 | tee "$out/train.txt"
  note="mini-alexnet's SGD steps, 1 and 2 devices"
  ! grep -q FAIL "$out/train.txt"
}

phase_timings() {
  local c name opts done=0
  for c in "${bench_cases[@]}"; do
    name=${c%%|*} opts=${c#*|}
    if [ "$(left)" -lt 30 ]; then  # what is measured stands; the rest waits
      echo "-- time budget: the benches after $done of ${#bench_cases[@]} skipped"
      break
    fi
    done=$((done + 1))
    echo "-- alexc bench $opts"
    # shellcheck disable=SC2086
    timeout "$(limit)" "$alexc" bench "$spec" --target cuda --batch "$big_batch" --runs "$runs" \
      --warmup "$warmup" $opts >"$out/bench-$name.md" 2>&1 || { cat "$out/bench-$name.md"; note="bench $name failed"; return 1; }
    cat "$out/bench-$name.md"
  done
  if [ -f "$peers" ] && found python3; then
    echo "-- PyTorch peers"
    timeout "$(limit)" python3 "$peers" --device cuda --batch "$big_batch" --precision fp32 tf32 bf16 \
      --compile | tee "$out/peers.txt" || { note="PyTorch peers failed"; return 1; }
    note="$done of ${#bench_cases[@]} benches and PyTorch's peers"
  else
    note="$done of ${#bench_cases[@]} benches; peers skipped: not found"
  fi
}

# The three layers with the most time in the fp32 bench's per-layer table ("| conv1+relu1
# +norm1+pool1 | 2.51 | ..."), by their first layer's name, which their kernels carry
# (k01_conv1, k01_conv1_im2col).
heaviest_layers() {
  awk -F'|' 'NF > 3 { n = $2; t = $3; gsub(/ /, "", n); gsub(/ /, "", t)
    if (n ~ /^[A-Za-z_][A-Za-z0-9_+.-]*$/ && n != "total" && t ~ /^[0-9.]+$/) print t, n }' \
    "$out/bench-fp32.md" 2>/dev/null | sort -rn | head -3 | awk '{ split($2, a, "+"); print a[1] }'
}

phase_ncu() {
  local layers regex
  layers=$(heaviest_layers | paste -sd'|')
  regex="k[0-9]+_(${layers:-conv1|conv2|conv5})"
  echo "the heaviest layers' kernels: $regex"
  if ! found ncu; then
    note="ncu skipped: not found"
    echo "$note" | tee "$out/ncu.txt"
    return 3
  fi
  timeout "$(limit)" ncu --kernel-name "regex:$regex" --launch-count 3 --section SpeedOfLight \
    --section MemoryWorkloadAnalysis "$alexc" run "$spec" --seed 1 --random 8 --target cuda \
    >"$out/ncu.txt" 2>&1 || { note="ncu failed"; return 1; }
  note="kernels matching $regex"
}

echo "gpu-check $mode: $spec, budget $budget s"
phase env 10
phase logits 60
phase sanitize 60
phase batch 60
phase train 40
phase timings 120
phase ncu 40
echo
echo "phase     status    time  note"
printf '%s\n' "${table[@]}" | tee "$out/summary.txt"
echo "total $(elapsed) s of $budget"
# The rehearsal is the control flow's test: every phase must have run, or found its tool
# missing, and none given way to the budget.
if [ "$mode" = rehearse ] && grep -q -e "time budget" -e "not run" "$out/summary.txt"; then
  echo "rehearse: a phase did not run"
  exit 1
fi
[ -z "$stopped" ]
