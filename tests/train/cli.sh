#!/usr/bin/env bash
# alexc train and alexc eval as a user meets them, on a Fashion-MNIST subset:
#   learn:  a short run must pass an accuracy floor that no broken gradient reaches;
#   resume: a run SIGKILLed at random moments and resumed each time ends with the same
#           weights, byte for byte, as one never interrupted;
#   errors: bad flags, bad data and a used --out directory get one message and a
#           non-zero exit;
#   photos: a folder of JPEG/PNG photos through train and eval --ten-crop;
#   devices: --devices 2 (the paper's model-parallel split) trains like one device.
# usage: cli.sh ALEXC [learn|resume|errors|photos|devices]   (no argument: all five)
set -euo pipefail
alexc="$1"
part="${2:-all}"
data=/usr/share/datasets/fashion-mnist
spec=specs/mini-alexnet.yaml
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
source "$(dirname "$0")/kill.sh"
[ -e "$data/train-labels-idx1-ubyte.gz" ] || fail "$data is missing: scripts/deps.sh installs dataset-fashion-mnist"

# metric COLUMN: the last row's COLUMN of a run's metrics.csv.
metric() {
  awk -F, -v col="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i } END { print $c }' "$1"
}

learn() {
  # 6000 images, 2 epochs of 94 steps of batch 64, fan-in init (the spec's own N(0, 0.01)
  # init does not learn in a few hundred steps, in PyTorch either).
  "$alexc" train "$spec" --data "$data" --out "$tmp/learn" --limit 6000 --test-limit 2000 \
    --epochs 2 --batch 64 --lr 0.05 --init fan-in --quiet > "$tmp/learn.log"
  top1=$(metric "$tmp/learn/metrics.csv" test_top1)
  echo "test top-1 after 188 steps: $top1"
  # The CPU target reaches 0.754 here (0.741 at lr 0.02); chance is 0.1. The floor catches
  # a network that does not learn or learns badly; the exact checks of every gradient
  # are train.grad (finite differences) and train.steps (20 steps against PyTorch).
  awk -v a="$top1" 'BEGIN { exit !(a >= 0.70) }' || fail "test top-1 $top1 is below the floor 0.70"
  [ -s "$tmp/learn/curves.png" ] || fail "no curves.png"
  [ "$(head -c 8 "$tmp/learn/curves.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] ||
    fail "curves.png is not a PNG"
  [ "$(wc -l < "$tmp/learn/metrics.csv")" -eq 3 ] || fail "metrics.csv should hold a header and 2 rows"
  # eval of the final weights agrees with the last epoch's test accuracy.
  "$alexc" eval "$spec" --weights "$tmp/learn/weights.safetensors" --data "$data" \
    --limit 2000 > "$tmp/eval.txt"
  pct=$(awk '{ for (i = 1; i <= NF; i++) if ($i == "top-1") print $(i + 1) }' "$tmp/eval.txt")
  awk -v p="${pct%\%}" -v a="$top1" 'BEGIN { exit !(p / 100 - a < 1e-4 && a - p / 100 < 1e-4) }' ||
    fail "eval says $pct, the run's last epoch $top1"
}

# run DIR [--resume]: a small run that checkpoints every 5 steps.
run() {
  local dir="$1"; shift
  "$alexc" train "$spec" --data "$data" --out "$dir" --limit 1200 --test-limit 200 --epochs 2 \
    --batch 40 --lr 0.02 --init fan-in --checkpoint-every 5 --quiet "$@"
}

resume() {
  run "$tmp/whole" > /dev/null
  local ckpt="$tmp/cut/checkpoint.safetensors" kills=0
  # Each round starts (or resumes) the run, waits until it has written a new checkpoint
  # (so every round makes progress, however slow the build), lets it go on for a random
  # moment within one checkpoint interval (possibly into the next save) and kills it with
  # SIGKILL.
  while [ "$kills" -lt 6 ] && [ ! -e "$tmp/cut/weights.safetensors" ]; do
    flag=()
    [ -e "$ckpt" ] && flag=(--resume)
    before=$(stamp "$ckpt")
    # exec: the background job is alexc itself, so kill -9 reaches it, not a shell.
    (exec "$alexc" train "$spec" --data "$data" --out "$tmp/cut" --limit 1200 --test-limit 200 \
       --epochs 2 --batch 40 --lr 0.02 --init fan-in --checkpoint-every 5 --quiet "${flag[@]}" \
       > /dev/null 2>&1) &
    pid=$!
    wait_for_new "$ckpt" "$before" "$pid"
    sleep "$(kill_delay "$tmp/whole/metrics.csv" 5)"
    if kill -9 "$pid" 2>/dev/null; then kills=$((kills + 1)); fi
    wait "$pid" 2>/dev/null || true
  done
  [ -e "$tmp/cut/weights.safetensors" ] || run "$tmp/cut" --resume > /dev/null
  echo "killed $kills times"
  [ "$kills" -ge 2 ] || fail "the run finished before it could be killed twice: make it longer"
  ! ls "$tmp/cut" | grep -q '\.tmp\.' || fail "temporary files left behind: $(ls "$tmp/cut")"
  cmp "$tmp/whole/weights.safetensors" "$tmp/cut/weights.safetensors" ||
    fail "weights after kill -9 and resume differ from an uninterrupted run's"
  cmp "$tmp/whole/checkpoint.safetensors" "$tmp/cut/checkpoint.safetensors" ||
    fail "final checkpoints (weights, momenta, state) differ"
  diff <(cut -d, -f1-8 "$tmp/whole/metrics.csv") <(cut -d, -f1-8 "$tmp/cut/metrics.csv") ||
    fail "metrics rows differ (other than times)"
}

# expect RC ARGS...: alexc ARGS must exit with RC and say one thing on stderr.
expect() {
  local want="$1"; shift
  set +e
  "$alexc" "$@" > /dev/null 2> "$tmp/err"
  local rc=$?
  set -e
  [ "$rc" -eq "$want" ] || fail "alexc $* exited $rc, not $want: $(cat "$tmp/err")"
  [ -s "$tmp/err" ] || fail "alexc $* printed no message"
}

errors() {
  expect 2 train "$spec" --data "$data"
  expect 2 train "$spec" --data "$data" --out "$tmp/e" --lr -1
  expect 2 train "$spec" --data "$data" --out "$tmp/e" --schedule sometimes
  expect 2 train "$spec" --data "$data" --out "$tmp/e" --batch 0
  expect 1 train "$spec" --data "$tmp/nowhere" --out "$tmp/e"
  expect 1 train "$spec" --data "$data" --out "$tmp/e" --target cuda
  expect 1 train specs/alexnet.yaml --data "$data" --out "$tmp/e"  # 28x28 data, 227x227 net
  mkdir -p "$tmp/bad"
  head -c 1000 "$data/train-images-idx3-ubyte.gz" | gzip -dc 2>/dev/null > "$tmp/bad/train-images-idx3-ubyte" || true
  cp "$data/train-labels-idx1-ubyte.gz" "$data/t10k-images-idx3-ubyte.gz" "$data/t10k-labels-idx1-ubyte.gz" "$tmp/bad/"
  expect 1 train "$spec" --data "$tmp/bad" --out "$tmp/e"  # a truncated IDX file
  # A used --out is continued only with --resume, and only with the same settings.
  run "$tmp/used" --epochs 1 --limit 80 > /dev/null
  expect 1 train "$spec" --data "$data" --out "$tmp/used" --limit 80
  expect 1 train "$spec" --data "$data" --out "$tmp/used" --resume --limit 80 --batch 8
  expect 1 eval "$spec" --weights "$tmp/nowhere.safetensors" --data "$data"
  # Data with more classes than the network scores: a message, not an index out of range.
  printf 'name: three\ninput: {channels: 1, height: 28, width: 28}\nlayers:\n  - {name: f, op: flatten}\n  - {name: fc, op: fc, out: 3}\n' > "$tmp/three.yaml"
  "$alexc" init "$tmp/three.yaml" --seed 1 -o "$tmp/three.safetensors" > /dev/null
  expect 1 eval "$tmp/three.yaml" --weights "$tmp/three.safetensors" --data "$data"
  expect 1 train "$tmp/three.yaml" --data "$data" --out "$tmp/three"
  # A corrupt checkpoint is refused, not half-read.
  size=$(stat -c %s "$tmp/used/checkpoint.safetensors")
  printf X | dd of="$tmp/used/checkpoint.safetensors" bs=1 seek=$((size - 100)) conv=notrunc 2>/dev/null
  expect 1 train "$spec" --data "$data" --out "$tmp/used" --limit 80 --test-limit 200 \
    --epochs 1 --batch 40 --lr 0.02 --init fan-in --checkpoint-every 5 --resume
}

# A photo folder (train/ and val/ of class folders) through train and eval --ten-crop,
# on a small 3-channel network: the paper's pipeline end to end.
photos() {
  for split in train val; do
    for class in cat dog; do
      mkdir -p "$tmp/photos/$split/$class"
      cp tests/data/cat.jpg "$tmp/photos/$split/$class/a.jpg"
      cp tests/data/cat.png "$tmp/photos/$split/$class/b.png"
    done
  done
  printf 'not a photo' > "$tmp/photos/train/dog/broken.jpg"
  cat > "$tmp/small.yaml" <<'YAML'
name: small
input: {channels: 3, height: 32, width: 32}
layers:
  - {name: conv1, op: conv, out: 8, kernel: 5, stride: 2}
  - {name: relu1, op: relu}
  - {name: pool1, op: maxpool, kernel: 3, stride: 2}
  - {name: flat, op: flatten}
  - {name: fc, op: fc, out: 2}
  - {name: prob, op: softmax}
YAML
  "$alexc" train "$tmp/small.yaml" --data "$tmp/photos" --out "$tmp/prun" --epochs 2 --batch 2 \
    --init fan-in --quiet > "$tmp/photos.log" 2> "$tmp/photos.err"
  grep -q "broken.jpg" "$tmp/photos.err" || fail "the unreadable photo was not named in a warning"
  [ "$(wc -l < "$tmp/prun/metrics.csv")" -eq 3 ] || fail "photo run: metrics.csv should hold 2 rows"
  "$alexc" eval "$tmp/small.yaml" --weights "$tmp/prun/weights.safetensors" --data "$tmp/photos" \
    --ten-crop > "$tmp/ten.txt"
  grep -q "^4 images (ten crops each)" "$tmp/ten.txt" || fail "eval --ten-crop: $(cat "$tmp/ten.txt")"
}

# --devices 2 and one device, the same 10 steps: the same losses (to float rounding: the
# split sums partial input gradients across devices; test_steps checks the weights), and
# a run's device count is part of its settings on --resume.
devices() {
  run "$tmp/one" --epochs 1 --limit 400 > /dev/null
  run "$tmp/two" --epochs 1 --limit 400 --devices 2 > /dev/null
  for col in train_loss test_loss; do
    a=$(metric "$tmp/one/metrics.csv" $col) b=$(metric "$tmp/two/metrics.csv" $col)
    echo "$col: one device $a, two devices $b"
    awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; exit !(d * d <= 1e-10 * a * a) }' ||
      fail "$col differs between one and two devices: $a against $b"
  done
  expect 1 train "$spec" --data "$data" --out "$tmp/two" --limit 400 --test-limit 200 \
    --epochs 1 --batch 40 --lr 0.02 --init fan-in --checkpoint-every 5 --resume
  expect 2 train "$spec" --data "$data" --out "$tmp/e" --devices 9
}

case "$part" in
  learn) learn ;;
  photos) photos ;;
  resume) resume ;;
  errors) errors ;;
  devices) devices ;;
  all) learn; resume; errors; photos; devices ;;
  *) fail "unknown part $part" ;;
esac
echo "ok"
