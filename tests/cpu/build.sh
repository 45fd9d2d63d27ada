#!/usr/bin/env bash
# alexc build and compile --target cpu, as a user runs them: a standalone executable
# classifies a JPEG and a PNG, and reproduces the reference's output on a .npy batch;
# the .so and its header are written; bad inputs get one message and exit 1.
# usage: build.sh ALEXC   (alexrt is found beside it)
set -euo pipefail
alexc=$(realpath "$1")
alexrt=$(dirname "$alexc")/alexrt
root=$(pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
fail() { echo "FAIL: $*"; exit 1; }

"$alexc" build "$root/specs/mini-alexnet.yaml" --seed 3 --scheme fan-in -o mini >/dev/null
[ -x mini ] && [ -s mini.safetensors ] || fail "no executable or weights"
nm -D mini 2>/dev/null | grep -qi llvm && fail "the executable links LLVM"
ldd mini | grep -qi -e llvm -e yaml && fail "the executable links LLVM or libyaml"

# Photos: both formats classify (10 classes; crops 28x28 grey after resizing to 32).
out=$(./mini "$root/tests/data/cat.jpg" "$root/tests/data/cat.png" --resize 32 --top 3)
echo "$out"
[ "$(echo "$out" | grep -c '^/.*cat\.\(jpg\|png\):  [0-9]')" = 2 ] || fail "photos not classified"

# A .npy batch gives the reference executor's output.
"$alexc" input "$root/specs/mini-alexnet.yaml" --seed 4 --batch 5 -o x.npy >/dev/null
./mini x.npy --output y.npy --top 1 >/dev/null
"$alexc" run "$root/specs/mini-alexnet.yaml" --weights mini.safetensors --input x.npy \
  --output ref.npy >/dev/null
"$alexc" compare y.npy ref.npy --tolerance 1e-4

# Labels, and what a user gets wrong.
printf 'shirt\ntrouser\npullover\ndress\ncoat\nsandal\nt-shirt\nsneaker\nbag\nboot\n' > labels.txt
./mini "$root/tests/data/cat.png" --resize 32 --labels labels.txt --top 1 | grep -q '[a-z] (' ||
  fail "labels not used"
echo "not an image" > bad.jpg
if ./mini bad.jpg 2>err.txt; then fail "a text file was classified"; fi
grep -q "bad.jpg" err.txt || fail "the error does not name the file: $(cat err.txt)"
head -c 200 "$root/tests/data/cat.jpg" > cut.jpg
if ./mini cut.jpg 2>err.txt; then fail "a truncated JPEG was classified"; fi
grep -q "cut.jpg" err.txt || fail "the error does not name the file: $(cat err.txt)"
if ./mini "$root/tests/data/cat.png" --weights nothing.safetensors 2>err.txt; then
  fail "ran without weights"
fi
grep -q "nothing.safetensors" err.txt || fail "missing weights not named: $(cat err.txt)"

# Weights of another network: refused with the tensor named, before anything runs.
"$alexc" init "$root/specs/alexnet-torchvision.yaml" --seed 1 -o other.safetensors >/dev/null 2>&1 ||
  "$alexc" init "$root/tests/golden/conv_pad/spec.yaml" --seed 1 -o other.safetensors >/dev/null
if ./mini "$root/tests/data/cat.png" --weights other.safetensors 2>err.txt; then
  fail "ran with another network's weights"
fi
grep -q "other.safetensors" err.txt || fail "wrong weights not named: $(cat err.txt)"

# The shared object and its header.
"$alexc" compile "$root/specs/mini-alexnet.yaml" --target cpu -o model.so >/dev/null
[ -s model.so ] && grep -q "MINI_ALEXNET_INPUT_C 1" model.h || fail "no .so or header"
nm -D model.so | grep -q alexc_cpu_program_v1 || fail "the .so does not export the program"
# The runtime alone runs it: alexrt info and run, the reference's output on the batch.
"$alexrt" info model.so | grep -q "target     cpu" || fail "alexrt info does not know the .so"
"$alexrt" run model.so --weights mini.safetensors --input x.npy --output y2.npy
"$alexc" compare y2.npy ref.npy --tolerance 1e-4
if "$alexrt" run model.so --weights other.safetensors --input x.npy 2>err.txt; then
  fail "alexrt ran with another network's weights"
fi
grep -q "other.safetensors" err.txt || fail "alexrt: wrong weights not named: $(cat err.txt)"
head -c 3000 model.so > cut.so
if "$alexrt" run cut.so --weights mini.safetensors --input x.npy 2>err.txt; then
  fail "alexrt loaded a truncated .so"
fi
grep -q "cut.so" err.txt || fail "alexrt: truncated .so not named: $(cat err.txt)"
"$alexc" compile "$root/specs/mini-alexnet.yaml" --target cpu --emit-llvm ll >/dev/null
grep -q "define void @k_1_conv1_d0" ll/mini_alexnet.ll || fail "no LLVM IR"
if "$alexc" compile "$root/specs/mini-alexnet.yaml" --target cpu --cpu pentium9 -o z.so 2>err.txt
then fail "an unknown --cpu was accepted"; fi
grep -q "unknown --cpu 'pentium9'" err.txt || fail "unclear --cpu error: $(cat err.txt)"
echo "cpu build: OK"
