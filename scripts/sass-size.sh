#!/usr/bin/env bash
# The size of each kernel of a generated .cu file in SASS instructions for sm_90, without
# a GPU and without cuobjdump/nvdisasm (this machine's toolkit has neither): nvcc
# compiles the file to a CUBIN, and a kernel's code is the ELF section .text.KERNEL, at
# 16 bytes per instruction on sm_90. Static size (every instruction once, loops once),
# including the end-of-kernel padding; a count per element is this divided by the
# elements one pass of the kernel's loop writes.
#
# usage: scripts/sass-size.sh FILE.cu [PATTERN]   (PATTERN: an ERE on the kernel names)
set -euo pipefail
src=$1 pattern=${2:-.}
nvcc=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$nvcc" -arch=sm_90 -cubin -o "$tmp/k.cubin" "$src"
readelf -SW "$tmp/k.cubin" 2>/dev/null |
  awk '$2 ~ /^\.text\./ && $3 == "PROGBITS" { print substr($2, 7), $6 }' |
  while read -r name hex; do
    if [[ $name =~ $pattern ]]; then printf "%-28s %6d instructions\n" "$name" $((16#$hex / 16)); fi
  done | sort
