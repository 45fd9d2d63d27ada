#!/usr/bin/env bash
# Data-parallel training with mpirun (docs/training.md), on a Fashion-MNIST subset:
#   same:   N ranks at batch B end within 1e-5 of one process at batch N*B on the CPU
#           target (2 ranks with a short last batch, 3 ranks with empty parts), after 20
#           steps or more, with the same per-epoch metrics; same_ref: 2 ranks on the
#           reference kernels;
#   resume: 2 ranks SIGKILLed at random moments and resumed each time end with the same
#           checkpoint, byte for byte, as 2 ranks never interrupted; resuming with another
#           rank count (or none) is refused with a message;
#   killed: one rank SIGKILLed mid-run ends the job, non-zero, within a bounded time,
#           saying which rank died; the checkpoint left behind is whole and loads;
#   errors: a setup error every rank makes (a bad flag, bad data) is printed once, not once
#           a rank; one that only rank 1 makes is printed, naming the rank;
#   ranks:  2 ranks as the 2 devices of the model-parallel split (--device-ranks) against
#           one process with --devices 2, 42 steps: the same bits (weights, checkpoint,
#           metrics); refused with one message without mpirun, with 3 ranks for 2 devices,
#           with --target cuda, and on resuming such a run without the flag or mpirun;
#   cuda:   --target cuda on the fake driver (tests/cuda/fake/, NCCL's sums done by MPI):
#           2 ranks at batch 1 against one process at batch 2, 21 steps, the last one
#           image (rank 0 holds none); 2 ranks on a machine of 1 GPU, and --devices 2
#           under mpirun, refused with a message. Needs ALEXC_FAKE_LIB (the fakes'
#           directory), ALEXC_FAKE_CUDA_CXX and ALEXC_FAKE_CUDA_EMU (train.cmake sets them).
# usage: mpi.sh ALEXC WEIGHTS_CLOSE [same|same_ref|resume|killed|errors|ranks|cuda]
#        (no part: all but cuda)
set -euo pipefail
alexc="$1"
close="$2"
part="${3:-all}"
data=/usr/share/datasets/fashion-mnist
spec=specs/mini-alexnet.yaml
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
source "$(dirname "$0")/kill.sh"
[ -e "$data/train-labels-idx1-ubyte.gz" ] || fail "$data is missing: scripts/deps.sh installs dataset-fashion-mnist"
mpirun="${ALEXC_MPIRUN:-mpirun}"
command -v "$mpirun" > /dev/null || fail "no $mpirun: scripts/deps.sh installs openmpi-bin"
# Open MPI refuses root without --allow-run-as-root; 3 ranks on 2 cores need
# --oversubscribe (and 2 ranks do on a machine whose other cores are taken).
# A rank waiting in a sum yields the CPU instead of spinning on it: Open MPI spins unless it
# knows the node is oversubscribed, and the other ranks (and other tests) need the cores.
mpi_flags=(--oversubscribe --mca mpi_yield_when_idle 1)
[ "$(id -u)" -ne 0 ] || mpi_flags+=(--allow-run-as-root)
# A sanitizer build: Open MPI's leaks are suppressed by its libraries' names further up
# their stacks (compiler/train/report.c), which the fast unwinder does not reach.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}fast_unwind_on_malloc=0"

# train N OUT ARGS...: N ranks (0: one process without mpirun) on a small subset.
train() {
  local n="$1" out="$2"; shift 2
  local cmd=("$alexc" train "$spec" --data "$data" --out "$out" --test-limit 100 --init fan-in
             --quiet "$@")
  if [ "$n" -eq 0 ]; then "${cmd[@]}"; else "$mpirun" "${mpi_flags[@]}" -np "$n" "${cmd[@]}"; fi
}

# metrics_close A B: the runs' metrics rows agree (losses to 1e-5 relative, the rest exactly,
# times aside).
metrics_close() {
  paste -d, <(cut -d, -f1-8 "$1") <(cut -d, -f1-8 "$2") | awk -F, '
    NR > 1 { for (i = 1; i <= 8; i++) { a = $i; b = $(i + 8); d = a - b; if (d < 0) d = -d
             if ((i == 3 || i == 5) ? d > 1e-5 * (b < 0 ? -b : b) : a != b) { print "column " i ": " a " against " b; bad = 1 } } }
    END { exit bad }' || fail "metrics differ: $1 against $2"
  [ "$(wc -l < "$1")" -eq "$(wc -l < "$2")" ] || fail "$1 and $2 hold different numbers of rows"
}

cases=0
# same_as_one N B TARGET ARGS...: N ranks at batch B against one process at N*B.
same_as_one() {
  local n="$1" b="$2" target="$3"; shift 3
  cases=$((cases + 1))
  local one="$tmp/one-$cases" many="$tmp/many-$cases"
  train 0 "$one" --batch $((n * b)) --target "$target" "$@" > /dev/null
  train "$n" "$many" --batch "$b" --target "$target" "$@" > "$many.log"
  grep -q "$n ranks of batch $b" "$many.log" || fail "the run does not say it has $n ranks: $(cat "$many.log")"
  # Rank 0 alone reports: one line an epoch, not one a rank.
  [ "$(grep -c '^epoch ' "$many.log")" -eq $(($(wc -l < "$many/metrics.csv") - 1)) ] ||
    fail "$n ranks printed other epoch lines than rank 0's $(($(wc -l < "$many/metrics.csv") - 1)): $(cat "$many.log")"
  echo "$n ranks at batch $b against 1 at $((n * b)), --target $target $*:"
  # Shown first (under pipefail a mismatch would end the script here, saying nothing), then
  # decided.
  "$close" "$spec" "$many/weights.safetensors" "$one/weights.safetensors" 1e-5 | tail -1 || true
  "$close" "$spec" "$many/weights.safetensors" "$one/weights.safetensors" 1e-5 > /dev/null ||
    fail "$n ranks' weights are not within 1e-5 of one process's"
  metrics_close "$many/metrics.csv" "$one/metrics.csv"
}

same() {
  # 410 images at 40 a step: 10 whole batches and one of 10, over 2 epochs (22 steps).
  same_as_one 2 20 cpu --limit 410 --epochs 2 --lr 0.01
  # 301 images at 30 a step: the last batch has 1 image, so two of the 3 ranks hold none.
  same_as_one 3 10 cpu --limit 301 --epochs 2 --lr 0.01
  # Ranks of 2 logical devices each (the model-parallel split inside every rank).
  same_as_one 2 20 cpu --limit 410 --epochs 1 --lr 0.01 --devices 2
}

# The reference kernels (slow): 20 steps of 8.
same_ref() { same_as_one 2 4 ref --limit 160 --epochs 1 --lr 0.01; }

# rank_pid MPIRUN_PID RANK: the pid of that rank of the job (mpirun's child whose
# environment says so), or nothing yet.
rank_pid() {
  local p
  for p in $(pgrep -P "$1" 2>/dev/null); do
    if tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2"; then
      echo "$p"
      return
    fi
  done
}

RUN=(--limit 800 --epochs 2 --batch 20 --lr 0.01 --checkpoint-every 4)

# kill_rank OUT RANK DELAY ARGS...: starts 2 ranks on OUT, waits for a new checkpoint, lets
# them run on for DELAY seconds and SIGKILLs rank RANK. Leaves mpirun's status in $tmp/rc,
# its output in $tmp/kill.log and the seconds from the kill to its end in $tmp/secs.
# Returns 1 when the run finished before the kill.
kill_rank() {
  local out="$1" rank="$2" delay="$3"; shift 3
  local ckpt="$out/checkpoint.safetensors" before pid victim t0
  before=$(stamp "$ckpt")
  (exec "$mpirun" "${mpi_flags[@]}" -np 2 "$alexc" train "$spec" --data "$data" --out "$out" \
     --test-limit 100 --init fan-in --quiet "${RUN[@]}" "$@" > "$tmp/kill.log" 2>&1) &
  pid=$!
  wait_for_new "$ckpt" "$before" "$pid"
  sleep "$delay"
  victim=$(rank_pid "$pid" "$rank")
  t0=$(date +%s)
  [ -n "$victim" ] && kill -9 "$victim" 2>/dev/null || { wait "$pid" || true; return 1; }
  local rc=0
  wait "$pid" || rc=$?
  echo "$rc" > "$tmp/rc"
  echo $(($(date +%s) - t0)) > "$tmp/secs"
}

resume() {
  train 2 "$tmp/whole" "${RUN[@]}" > /dev/null
  local kills=0 flag=() delay
  while [ "$kills" -lt 3 ] && [ ! -e "$tmp/cut/weights.safetensors" ]; do
    flag=()
    [ -e "$tmp/cut/checkpoint.safetensors" ] && flag=(--resume)
    delay=$(kill_delay "$tmp/whole/metrics.csv" 4)
    if kill_rank "$tmp/cut" $((RANDOM % 2)) "$delay" "${flag[@]}"; then kills=$((kills + 1)); fi
  done
  [ -e "$tmp/cut/weights.safetensors" ] || train 2 "$tmp/cut" "${RUN[@]}" --resume > /dev/null
  echo "killed a rank $kills times"
  [ "$kills" -ge 2 ] || fail "the run finished before a rank could be killed twice: make it longer"
  ! ls "$tmp/cut" | grep -q '\.tmp\.' || fail "temporary files left behind: $(ls "$tmp/cut")"
  cmp "$tmp/whole/checkpoint.safetensors" "$tmp/cut/checkpoint.safetensors" ||
    fail "2 ranks killed and resumed end with another checkpoint than 2 ranks never interrupted"
  cmp "$tmp/whole/weights.safetensors" "$tmp/cut/weights.safetensors" || fail "final weights differ"
  diff <(cut -d, -f1-8 "$tmp/whole/metrics.csv") <(cut -d, -f1-8 "$tmp/cut/metrics.csv") ||
    fail "metrics rows differ (other than times)"
  # Another rank count is refused, with one message that names both counts.
  local rc=0
  train 3 "$tmp/whole" "${RUN[@]}" --resume > /dev/null 2> "$tmp/err3" || rc=$?
  [ "$rc" -ne 0 ] || fail "--resume with 3 ranks of a 2-rank run was accepted"
  grep -q "trained by 2 ranks and this job has 3" "$tmp/err3" || fail "3 ranks: $(cat "$tmp/err3")"
  [ "$(grep -c 'trained by' "$tmp/err3")" -eq 1 ] || fail "the message was printed more than once: $(cat "$tmp/err3")"
  rc=0
  train 0 "$tmp/whole" "${RUN[@]}" --resume > /dev/null 2> "$tmp/err1" || rc=$?
  [ "$rc" -eq 1 ] || fail "--resume in one process of a 2-rank run exited $rc, not 1"
  grep -q "trained by 2 ranks and this job has 1" "$tmp/err1" || fail "1 process: $(cat "$tmp/err1")"
  cmp "$tmp/whole/checkpoint.safetensors" "$tmp/cut/checkpoint.safetensors" ||
    fail "a refused --resume changed the checkpoint"
}

killed() {
  local tries=0
  # Killed right after a checkpoint, so that it is surely mid-run (resume kills anywhere).
  until kill_rank "$tmp/k" 1 0; do
    tries=$((tries + 1))
    [ "$tries" -lt 3 ] || fail "the run kept finishing before rank 1 could be killed"
    rm -rf "$tmp/k"
  done
  local rc secs
  rc=$(cat "$tmp/rc") secs=$(cat "$tmp/secs")
  echo "rank 1 killed: mpirun exited $rc after $secs s, saying: $(grep -m1 'exited on signal' "$tmp/kill.log" || true)"
  [ "$rc" -ne 0 ] || fail "mpirun exited 0 after a rank was killed"
  [ "$secs" -le 30 ] || fail "the job took $secs s to end after a rank died"
  grep -q "rank 1 .* exited on signal 9" "$tmp/kill.log" || fail "no message says rank 1 died: $(cat "$tmp/kill.log")"
  ! pgrep -f -- "--out $tmp/k " > /dev/null || fail "a rank outlived the job"
  # The checkpoint is whole: it loads as weights, and the run resumes from it to the end.
  "$alexc" eval "$spec" --weights "$tmp/k/checkpoint.safetensors" --data "$data" --limit 100 > /dev/null ||
    fail "the checkpoint left behind does not load"
  train 2 "$tmp/k" "${RUN[@]}" --resume > /dev/null || fail "the run does not resume after a rank died"
  [ -e "$tmp/k/weights.safetensors" ] || fail "the resumed run wrote no weights"
}

# count_in FILE TEXT: how many lines of FILE hold TEXT.
count_in() { grep -c -- "$2" "$1" || true; }

errors() {
  local log="$tmp/err.log"
  ! train 2 "$tmp/e" --bogus-flag > "$log" 2>&1 || fail "a bad flag was accepted"
  [ "$(count_in "$log" "unrecognized option")" -eq 1 ] || fail "a bad flag is not reported once: $(cat "$log")"
  ! "$mpirun" "${mpi_flags[@]}" -np 2 "$alexc" train "$spec" --data "$tmp/none" --out "$tmp/e" \
    > "$log" 2>&1 || fail "missing data was accepted"
  [ "$(count_in "$log" "$tmp/none")" -eq 1 ] || fail "missing data is not reported once: $(cat "$log")"
  # Rank 1 alone fails (mpirun's MPMD form gives it other flags): its message is shown.
  ! "$mpirun" "${mpi_flags[@]}" -np 1 "$alexc" train "$spec" --data "$data" --out "$tmp/e" --limit 64 \
    : -np 1 "$alexc" train "$spec" --data "$tmp/none" --out "$tmp/e" --limit 64 \
    > "$log" 2>&1 || fail "rank 1's missing data was accepted"
  grep -q "^\[rank 1\] alexc: error: $tmp/none" "$log" || fail "rank 1's error is not shown: $(cat "$log")"
}

# refused LOG TEXT N ARGS...: N ranks (0: one process) with ARGS fail, saying TEXT once.
refused() {
  local log="$1" text="$2" n="$3"; shift 3
  ! train "$n" "$tmp/refused" "$@" > "$log" 2>&1 || fail "accepted: $n ranks, $*"
  [ "$(count_in "$log" "$text")" -eq 1 ] || fail "$n ranks, $*: not one message '$text': $(cat "$log")"
  [ ! -e "$tmp/refused/checkpoint.safetensors" ] || fail "$n ranks, $*: a refused run wrote a checkpoint"
}

# Each rank one device of the split: every rank runs the same pieces one process runs for
# its device, on the same data, and sums the logits with zeros, so the bits are the same.
ranks() {
  local one="$tmp/one" two="$tmp/two" log="$tmp/ranks.log"
  # 410 images at 20 a step: 20 whole batches and one of 10, over 2 epochs (42 steps).
  local args=(--limit 410 --epochs 2 --batch 20 --lr 0.01 --devices 2)
  train 0 "$one" "${args[@]}" > /dev/null
  train 2 "$two" "${args[@]}" --device-ranks > "$log"
  grep -q "2 ranks as the split's devices" "$log" || fail "the run does not say its ranks are devices: $(cat "$log")"
  [ "$(grep -c '^epoch ' "$log")" -eq 2 ] || fail "not one line an epoch (rank 0's): $(cat "$log")"
  echo "2 ranks as devices against 1 process with --devices 2:"
  "$close" "$spec" "$two/weights.safetensors" "$one/weights.safetensors" 0 | tail -1 || true  # shown; cmp decides
  cmp "$two/weights.safetensors" "$one/weights.safetensors" ||
    fail "2 ranks as devices end with other weights than one process with --devices 2"
  cmp "$two/checkpoint.safetensors" "$one/checkpoint.safetensors" || fail "the checkpoints differ"
  metrics_close "$two/metrics.csv" "$one/metrics.csv"
  diff <(cut -d, -f1-8 "$two/metrics.csv") <(cut -d, -f1-8 "$one/metrics.csv") ||
    fail "metrics rows differ (other than times)"
  local small=(--limit 40 --epochs 1 --batch 20 --devices 2 --device-ranks)
  refused "$tmp/r0.log" "--device-ranks needs mpirun" 0 "${small[@]}"
  refused "$tmp/r3.log" "this job has 3 ranks and --devices 2" 3 "${small[@]}"
  refused "$tmp/rc.log" "not with --target cuda" 2 "${small[@]}" --target cuda
  # The mode is part of the run's settings: resuming it as replicas is refused.
  ! train 2 "$two" "${args[@]}" --resume > "$log" 2>&1 || fail "resumed without --device-ranks"
  [ "$(count_in "$log" "device-ranks 1")" -eq 1 ] || fail "resume without --device-ranks: $(cat "$log")"
  ! train 0 "$two" "${args[@]}" --resume > "$log" 2>&1 || fail "resumed in one process"
  grep -q "trained by 2 ranks and this job has 1: .* each rank was one of its devices" "$log" ||
    fail "resume in one process: $(cat "$log")"
  cmp "$two/checkpoint.safetensors" "$one/checkpoint.safetensors" || fail "a refused --resume changed the checkpoint"
}

# The fake driver builds each kernel module from NVRTC's cache: the one-process run goes
# first and builds them, so the ranks find them (they are the same: the all-reduce is a
# plan step, not a kernel) instead of building them at once.
cuda() {
  [ -n "${ALEXC_FAKE_LIB:-}" ] || fail "ALEXC_FAKE_LIB is not set: run this part through ctest"
  export LD_LIBRARY_PATH="$ALEXC_FAKE_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export ALEXC_CACHE="$tmp/cache" ALEXC_FAKE_CUDA_MODULES="$tmp/modules"
  export ALEXC_FAKE_CUDA_CACHE="$tmp/cache" ALEXC_FAKE_CUDA_CXX ALEXC_FAKE_CUDA_EMU
  # Too few GPUs: 2 ranks on a machine with 1 (the fake's default), each needing one.
  local log="$tmp/gpus.log"
  ! ALEXC_FAKE_CUDA_GPUS=1 train 2 "$tmp/g" --target cuda --limit 8 --batch 2 > "$log" 2>&1 ||
    fail "2 ranks on 1 GPU were accepted"
  [ "$(count_in "$log" "2 ranks on this machine of 1 GPU")" -eq 1 ] ||
    fail "2 ranks on 1 GPU: no single message: $(cat "$log")"
  ! ALEXC_FAKE_CUDA_GPUS=4 train 2 "$tmp/g" --target cuda --devices 2 --limit 8 --batch 2 \
    > "$log" 2>&1 || fail "--devices 2 under mpirun was accepted"
  [ "$(count_in "$log" "one GPU a rank: --devices 2")" -eq 1 ] ||
    fail "--devices 2 under mpirun: no single message: $(cat "$log")"
  # 41 images at 2 a step: 20 whole steps and one of 1 image, which rank 1 holds.
  ALEXC_FAKE_CUDA_GPUS=2 same_as_one 2 1 cuda --limit 41 --epochs 1 --lr 0.01
}

case "$part" in
  same) same ;;
  cuda) cuda ;;
  same_ref) same_ref ;;
  resume) resume ;;
  killed) killed ;;
  errors) errors ;;
  ranks) ranks ;;
  all) same; same_ref; resume; killed; errors; ranks ;;
  *) fail "unknown part $part" ;;
esac
echo "ok"
