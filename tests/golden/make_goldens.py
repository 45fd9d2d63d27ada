#!/usr/bin/python3
"""Regenerate the golden tests in tests/golden/ from PyTorch.

The reference executor (compiler/exec/reference.c) is the oracle for every backend,
so it needs an oracle of its own that shares none of its code: PyTorch. For each case
below this script

  1. asks the built `alexc` for the case's deterministic weights and input
     (`alexc init SPEC --seed S --scheme SCHEME`, `alexc input SPEC --seed S2 --batch N`),
     in a temporary directory: neither is checked in, because `alexc golden check`
     regenerates both from the seeds recorded in the manifest;
  2. builds the network in PyTorch from the spec YAML, with a generic translator from
     our spec format to torch.nn.functional ops (run_spec below);
  3. writes tests/golden/CASE/golden.yaml (the manifest `alexc golden check` reads)
     and one float32 .npy per recorded layer output, as PyTorch computed it.

Then it runs `alexc golden check` on every case it wrote and prints the worst relative
error of each output, so a regeneration shows at once whether the reference executor
and PyTorch agree. The CI compares against the checked-in .npy files without PyTorch.

Precision: the torch side is computed in float32, as a normal user would. It agrees
with the double-accumulating reference executor to at most 4.3e-6 (alexnet's prob;
7e-8 to 2e-6 elsewhere, 0 for pooling), 23x inside the 1e-4 tolerance, so float64 is
not needed. (In float64 the worst is 2e-7: what remains is the reference rounding each
layer's output to float32.) --dtype float64 computes in float64 and casts the results
to float32, should a future case need it. torch runs single-threaded so that a
regeneration reproduces the .npy files bit for bit instead of churning them.

Tolerance: max relative error 1e-4, defined per output as max|got - want| / max|want|
(compare() in compiler/tools/cli.c) -- relative to the output's largest magnitude,
not element-wise, so tiny elements do not make the test flaky.

LRN: our spec's LRN is the paper's formula, b_i = a_i / (k + alpha * sum_j a_j^2)^beta
over `size` channels centred on i, clipped at the edges, with NO division by size.
torch.nn.functional.local_response_norm averages the squares (divides alpha by size),
so it is given alpha * size. `groups: G` clips the window at channel-group edges: torch
has no such option, so each group of channels is normalised separately (split + cat).

Usage (from anywhere; run with Debian's /usr/bin/python3, which has PyTorch):
    /usr/bin/python3 tests/golden/make_goldens.py [--alexc build/alexc] [--case NAME ...]
or `make regen-goldens` in a build directory.
"""

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import torch
import torch.nn.functional as F
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))  # tests/golden
ROOT = os.path.dirname(os.path.dirname(HERE))  # the repository
TOLERANCE = 1e-4


class Case:
    """One golden test: a network, its seeds, and the layers whose outputs are recorded.

    `spec` is either the name of a file in specs/ (the manifest then points at
    ../../../specs/NAME so that a spec change that alters outputs fails the test), or
    the YAML text of a small net, stored as tests/golden/NAME/spec.yaml.

    `decoys` name plausible mistakes (variants of the translator, see run_spec)
    that this case exists to catch: the script refuses to write a case whose golden
    output would not tell the mistake apart, i.e. would differ from the decoy's by less
    than 100x the tolerance.
    """

    def __init__(self, name, spec, outputs, batch=2, seed=1, input_seed=2, init="fan-in",
                 decoys=()):
        self.name, self.outputs, self.batch = name, outputs, batch
        self.seed, self.input_seed, self.init, self.decoys = seed, input_seed, init, decoys
        if spec.endswith(".yaml"):
            self.spec_file, self.spec_text = os.path.join(ROOT, "specs", spec), None
        else:
            self.spec_file, self.spec_text = None, textwrap.dedent(spec).lstrip()


# The small nets use `init: spec` with a non-zero bias, so that bias addition is
# exercised: the fan-in scheme sets every bias to zero. Where a net has biases, they
# differ per channel (`bias_std`), so a bias read from the wrong channel shows too.
# The real specs use fan-in, whose N(0, sqrt(2/fan_in)) weights keep activations O(1)
# through AlexNet (the paper's N(0, 0.01) would shrink the signal until the input
# hardly mattered).
CASES = [
    # ------------------------------------------------------------ the real networks
    # Batch 1 for the big nets: the reference executor takes ~2 s per image (more under
    # ASan in CI). One early output each exercises conv/LRN/pool with a small file.
    Case("alexnet", "alexnet.yaml", ["pool2", "fc8", "prob"], batch=1, seed=11, input_seed=12),
    Case("alexnet_torchvision", "alexnet-torchvision.yaml", ["features.5", "classifier.6"],
         batch=1, seed=21, input_seed=22),
    Case("mini_alexnet", "mini-alexnet.yaml", ["pool2", "fc6", "prob"], batch=2, seed=31,
         input_seed=32),

    # ------------------------------------------------------------ one op's odd cases
    Case("lrn_edges", """
        # LRN near the edges of the channel range. With 7 channels and size 5, channels
        # 0, 1, 5 and 6 have windows clipped at an edge; lrn9's window is wider than the
        # 7 channels, so it is clipped at both ends. alpha is large so that the
        # normalisation dominates the output (with AlexNet's 1e-4 it would hardly show).
        name: lrn_edges
        input: {channels: 7, height: 5, width: 5}
        layers:
          - {name: lrn5, op: lrn, size: 5, alpha: 0.5, beta: 0.75, k: 1, inputs: input}
          - {name: lrn9, op: lrn, size: 9, alpha: 1.0, beta: 0.5, k: 2, inputs: input}
          - {name: both, op: concat, inputs: [lrn5, lrn9]}
        """, ["lrn5", "lrn9"], seed=101, input_seed=102, decoys=["lrn_alpha_over_size"]),
    Case("lrn_groups", """
        # LRN with groups: the window is clipped at the edges of each channel group, as
        # if each group were a separate tensor (the paper's two GPUs). norm2 has groups
        # of 4 channels, norm4 groups of 2: both smaller than the window.
        name: lrn_groups
        input: {channels: 8, height: 4, width: 4}
        layers:
          - {name: norm2, op: lrn, size: 5, alpha: 0.5, beta: 0.75, k: 1, groups: 2, inputs: input}
          - {name: norm4, op: lrn, size: 5, alpha: 0.5, beta: 0.75, k: 1, groups: 4, inputs: input}
          - {name: both, op: concat, inputs: [norm2, norm4]}
        """, ["norm2", "norm4"], seed=111, input_seed=112,
         decoys=["lrn_ignore_groups", "lrn_alpha_over_size"]),
    Case("conv_groups2", """
        # Grouped convolution, 2 groups: out channels 0-1 see input channels 0-2 only.
        name: conv_groups2
        input: {channels: 6, height: 7, width: 7}
        init: {weight_std: 0.2, bias: 0.1, bias_std: 0.1}
        layers:
          - {name: conv, op: conv, out: 4, kernel: 3, pad: 1, groups: 2}
        """, ["conv"], seed=121, input_seed=122, init="spec"),
    Case("conv_groups4", """
        # Grouped convolution, 4 groups of 2 input and 3 output channels (in and out per
        # group differ, so mixing up the two strides of the weight tensor shows).
        name: conv_groups4
        input: {channels: 8, height: 6, width: 6}
        init: {weight_std: 0.25, bias: -0.2, bias_std: 0.2}
        layers:
          - {name: conv, op: conv, out: 12, kernel: 3, groups: 4}
        """, ["conv"], seed=131, input_seed=132, init="spec", decoys=["bias_first_channel"]),
    Case("pool_overlap", """
        # Overlapping max pooling (kernel 3, stride 2) as in AlexNet. 12 does not fit a
        # whole number of windows: floor((12 - 3) / 2) + 1 = 5, the last column unread.
        # Then kernel 3 stride 1 (maximal overlap).
        name: pool_overlap
        input: {channels: 4, height: 12, width: 12}
        layers:
          - {name: pool_k3s2, op: maxpool, kernel: 3, stride: 2}
          - {name: pool_k3s1, op: maxpool, kernel: 3, stride: 1}
        """, ["pool_k3s2", "pool_k3s1"], seed=141, input_seed=142),
    Case("pool_pad", """
        # Max pooling with padding, applied straight to N(0,1) input: padding must never
        # win the max, so a corner window whose in-image values are all negative gives a
        # negative result (PyTorch pads with -inf). kernel 2 pad 1 leaves edge windows
        # a single in-image element.
        name: pool_pad
        input: {channels: 8, height: 9, width: 9}
        layers:
          - {name: pool_k3p1, op: maxpool, kernel: 3, stride: 2, pad: 1}
          - {name: pool_k2p1, op: maxpool, kernel: 2, stride: 2, pad: 1, inputs: input}
          - {name: both, op: concat, inputs: [pool_k3p1, pool_k2p1]}
        """, ["pool_k3p1", "pool_k2p1"], seed=151, input_seed=152, decoys=["pool_zero_pad"]),
    Case("conv_pad", """
        # Convolution with padding: 'same' padding (kernel 5, pad 2), then more padding
        # than 'same' (kernel 3, pad 2: the output grows and its corners see one pixel),
        # then padding with a stride that does not divide: 8x8, kernel 5, stride 3, pad 1
        # gives floor((8 + 2 - 5) / 3) + 1 = 2.
        name: conv_pad
        input: {channels: 3, height: 6, width: 6}
        init: {weight_std: 0.2, bias: 0.05, bias_std: 0.1}
        layers:
          - {name: conv_same, op: conv, out: 4, kernel: 5, pad: 2}
          - {name: conv_wide, op: conv, out: 3, kernel: 3, pad: 2}
          - {name: conv_s3p1, op: conv, out: 2, kernel: 5, stride: 3, pad: 1}
        """, ["conv_same", "conv_wide", "conv_s3p1"], seed=161, input_seed=162, init="spec"),
    Case("stride_uneven", """
        # A stride that does not divide the input: 10x10, kernel 3, stride 4 gives
        # floor((10 - 3) / 4) + 1 = 2 outputs per side; rows/columns 7-9 are never read.
        name: stride_uneven
        input: {channels: 3, height: 10, width: 10}
        init: {weight_std: 0.3, bias: 0.1, bias_std: 0.1}
        layers:
          - {name: conv_s4, op: conv, out: 4, kernel: 3, stride: 4, inputs: input}
          - {name: pool_s4, op: maxpool, kernel: 3, stride: 4, inputs: input}
          - {name: conv_pool, op: concat, inputs: [conv_s4, pool_s4]}
        """, ["conv_s4", "pool_s4"], seed=171, input_seed=172, init="spec"),
    Case("pool_ceil", """
        # ceil_mode: the output size rounds up, so the last window hangs over the bottom
        # or right edge and is clipped (10 rows, kernel 3, stride 2: 5 rows, not 4).
        # ceil_k3s3p1's width is PyTorch's exception: ceil((11 + 2 - 3) / 3) + 1 = 5,
        # but the 5th window would start at 12 - 1 = 11, in the right pad, so 4. A
        # maxpool without stride takes stride = kernel (PyTorch's default).
        name: pool_ceil
        input: {channels: 4, height: 10, width: 11}
        layers:
          - {name: ceil_k3s2, op: maxpool, kernel: 3, stride: 2, ceil_mode: true, inputs: input}
          - {name: ceil_k3s3p1, op: maxpool, kernel: 3, stride: 3, pad: 1, ceil_mode: true, inputs: input}
          - {name: default_stride, op: maxpool, kernel: 3, inputs: input}
          - {name: default_stride_ceil, op: maxpool, kernel: 3, ceil_mode: true, inputs: input}
          - {name: f1, op: flatten, inputs: ceil_k3s2}
          - {name: f2, op: flatten, inputs: ceil_k3s3p1}
          - {name: f3, op: flatten, inputs: default_stride}
          - {name: f4, op: flatten, inputs: default_stride_ceil}
          - {name: all, op: concat, inputs: [f1, f2, f3, f4]}
        """, ["ceil_k3s2", "ceil_k3s3p1", "default_stride", "default_stride_ceil"], seed=221,
         input_seed=222),
    Case("pool_wide_pad", """
        # Max-pool pads beyond half the kernel, up to kernel - 1 (ONNX allows them,
        # PyTorch does not): every window still holds an input pixel, some only one.
        # PyTorch's side pads with -inf first. The decoy pads with zeros instead: on the
        # N(0,1) input, a window of mostly padding then gives 0 where its pixels are
        # all negative.
        name: pool_wide_pad
        input: {channels: 3, height: 7, width: 6}
        layers:
          - {name: wide_sym, op: maxpool, kernel: 3, stride: 1, pad: 2, inputs: input}
          - {name: wide_sides, op: maxpool, kernel: 4, stride: 3, pad: [3, 0, 2, 3], inputs: input}
          - {name: wide_k2, op: maxpool, kernel: 2, stride: 2, pad: [1, 1, 1, 1], inputs: input}
          - {name: f1, op: flatten, inputs: wide_sym}
          - {name: f2, op: flatten, inputs: wide_sides}
          - {name: f3, op: flatten, inputs: wide_k2}
          - {name: all, op: concat, inputs: [f1, f2, f3]}
        """, ["wide_sym", "wide_sides", "wide_k2"], seed=241, input_seed=242,
         decoys=["pool_zero_pad"]),
    Case("pad_sides", """
        # Padding per side [top, left, bottom, right], per axis [h, w], and `same` (ONNX's
        # SAME_UPPER: the odd pixel at the bottom/right; 7x6, kernel 4, stride 2 pads rows
        # 1 above and 2 below). Pools read the N(0,1) input, so padding must never win.
        # The decoy indexes from the bottom/right pads instead of the top/left ones.
        name: pad_sides
        input: {channels: 3, height: 7, width: 6}
        init: {weight_std: 0.3, bias: 0.1, bias_std: 0.1}
        layers:
          - {name: conv_tlbr, op: conv, out: 4, kernel: 3, pad: [2, 0, 1, 1], inputs: input}
          - {name: conv_hw, op: conv, out: 3, kernel: 3, stride: 2, pad: [0, 1], inputs: input}
          - {name: conv_same_s2, op: conv, out: 2, kernel: 4, stride: 2, pad: same, inputs: input}
          - {name: conv_same_k2, op: conv, out: 2, kernel: 2, pad: same, inputs: input}
          - {name: pool_tlbr, op: maxpool, kernel: 3, stride: 2, pad: [1, 0, 0, 1], inputs: input}
          - {name: pool_same, op: maxpool, kernel: 2, pad: same, inputs: input}
          - {name: pool_tlbr_ceil, op: maxpool, kernel: 3, stride: 2, pad: [0, 1, 1, 0], ceil_mode: true, inputs: input}
          - {name: f1, op: flatten, inputs: conv_tlbr}
          - {name: f2, op: flatten, inputs: conv_hw}
          - {name: f3, op: flatten, inputs: conv_same_s2}
          - {name: f4, op: flatten, inputs: conv_same_k2}
          - {name: f5, op: flatten, inputs: pool_tlbr}
          - {name: f6, op: flatten, inputs: pool_same}
          - {name: f7, op: flatten, inputs: pool_tlbr_ceil}
          - {name: all, op: concat, inputs: [f1, f2, f3, f4, f5, f6, f7]}
        """, ["conv_tlbr", "conv_hw", "conv_same_s2", "conv_same_k2", "pool_tlbr", "pool_same",
              "pool_tlbr_ceil"], seed=231, input_seed=232, init="spec",
         decoys=["pads_swapped", "pool_zero_pad"]),
    Case("conv_1x1", """
        # 1x1 convolutions: a per-pixel matrix product; then 1x1 with stride 2 (7 -> 4).
        name: conv_1x1
        input: {channels: 5, height: 7, width: 7}
        init: {weight_std: 0.4, bias: 0.1, bias_std: 0.2}
        layers:
          - {name: conv_1x1, op: conv, out: 3, kernel: 1}
          - {name: conv_1x1_s2, op: conv, out: 2, kernel: 1, stride: 2}
        """, ["conv_1x1", "conv_1x1_s2"], seed=181, input_seed=182, init="spec",
         decoys=["bias_first_channel"]),
    Case("no_bias", """
        # Layers without bias: the weights file has no conv.bias or fc.bias tensor and
        # the executor must not read one. The network's bias rule (0.5) would show if a
        # bias were added anyway.
        name: no_bias
        input: {channels: 3, height: 5, width: 5}
        init: {weight_std: 0.3, bias: 0.5}
        layers:
          - {name: conv, op: conv, out: 4, kernel: 3, bias: false}
          - {name: flatten, op: flatten}
          - {name: fc, op: fc, out: 5, bias: false}
        """, ["conv", "fc"], seed=191, input_seed=192, init="spec"),
    Case("branch_concat", """
        # Two convolutions read the same input; the concat puts the input itself between
        # them, so its channel order is [a (4), input (3), b (2)].
        name: branch_concat
        input: {channels: 3, height: 6, width: 6}
        init: {weight_std: 0.3, bias: 0.1, bias_std: 0.1}
        layers:
          - {name: a, op: conv, out: 4, kernel: 3, pad: 1, inputs: input}
          - {name: b, op: conv, out: 2, kernel: 1, inputs: input}
          - {name: cat, op: concat, inputs: [a, input, b]}
          - {name: relu, op: relu}
        """, ["cat", "relu"], seed=201, input_seed=202, init="spec"),
    Case("flatten_fc_softmax", """
        # Flatten of a non-square CxHxW (order matters), fc, softmax. The fc weights are
        # large so that the logits reach the hundreds: exp() of them overflows float32
        # unless softmax subtracts the maximum first. The biases are large enough too
        # that one read from the wrong output shows.
        name: flatten_fc_softmax
        input: {channels: 4, height: 3, width: 2}
        init: {weight_std: 30, bias: 0.5, bias_std: 40}
        layers:
          - {name: flatten, op: flatten}
          - {name: fc, op: fc, out: 10}
          - {name: prob, op: softmax}
        """, ["fc", "prob"], batch=3, seed=211, input_seed=212, init="spec",
         decoys=["bias_first_channel"]),
]


# ---------------------------------------------------------------- tensors on disk

def read_safetensors(path):
    """A safetensors file as {name: float32 array}: 8-byte little-endian header length,
    a JSON header {name: {dtype, shape, data_offsets}}, then the raw data."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            sys.exit(f"{path}: tensor {name} is {info['dtype']}, want F32")
        begin, end = info["data_offsets"]
        raw = data[8 + n + begin:8 + n + end]
        tensors[name] = np.frombuffer(raw, dtype="<f4").reshape(info["shape"]).copy()
    return tensors


# ---------------------------------------------------------------- spec -> PyTorch

def lrn(x, size, alpha, beta, k, groups, variant):
    """Our LRN in torch: torch divides alpha by size, ours does not (see the docstring);
    groups are normalised separately so the window stops at each group's edges."""
    torch_alpha = alpha if "lrn_alpha_over_size" in variant else alpha * size
    if "lrn_ignore_groups" in variant:
        groups = 1
    parts = torch.split(x, x.shape[1] // groups, dim=1)
    return torch.cat([F.local_response_norm(p, size, alpha=torch_alpha, beta=beta, k=k)
                      for p in parts], dim=1)


def same_pads(size, kernel, stride):
    """ONNX's SAME_UPPER on one axis: output ceil(size / stride), the odd pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pads_of(layer, x, kernel, stride, variant):
    """The spec's `pad` as (top, left, bottom, right): P, [h, w], [t, l, b, r] or same."""
    pad = layer.get("pad", 0)
    if pad == "same":
        (t, b), (l, r) = (same_pads(x.shape[2], kernel, stride),
                          same_pads(x.shape[3], kernel, stride))
    elif isinstance(pad, list) and len(pad) == 2:
        t, l, b, r = pad[0], pad[1], pad[0], pad[1]
    elif isinstance(pad, list):
        t, l, b, r = pad
    else:
        t = l = b = r = int(pad)
    if "pads_swapped" in variant:  # the mistake: indexing from the bottom/right pads
        t, l, b, r = b, r, t, l
    return int(t), int(l), int(b), int(r)


def conv(x, w, b, stride, groups, pads):
    """Asymmetric zero padding as F.pad before an unpadded conv2d."""
    t, l, bottom, r = pads
    return F.conv2d(F.pad(x, (l, r, t, bottom)), w, b, stride=stride, groups=groups)


def maxpool(x, kernel, stride, pads, ceil_mode, variant):
    t, l, b, r = pads
    if "pool_zero_pad" in variant:  # the mistake: padding with zeros instead of -inf
        return F.max_pool2d(F.pad(x, (l, r, t, b)), kernel, stride, ceil_mode=ceil_mode)
    if t == l == b == r and 2 * t <= kernel:  # PyTorch's own padding (and its ceil_mode rule)
        return F.max_pool2d(x, kernel, stride, padding=t, ceil_mode=ceil_mode)
    # Asymmetric: -inf pads, so padding never wins. With ceil_mode torch then lets the
    # last window start in the bottom/right pad, where alexc (and torch with symmetric
    # pads) drops it; the cases here avoid such sizes, and a mismatch shows as a shape
    # error in `alexc golden check`.
    padded = F.pad(x, (l, r, t, b), value=float("-inf"))
    return F.max_pool2d(padded, kernel, stride, ceil_mode=ceil_mode)


def bias_of(params, layer, variant):
    """The layer's bias tensor, or None when the spec says it has none."""
    b = params.get(layer["name"] + ".bias")
    if (b is not None) != layer.get("bias", True):
        sys.exit(f"layer {layer['name']}: bias tensor presence disagrees with the spec")
    if b is not None and "bias_first_channel" in variant:  # the mistake: one bias for all
        b = b[:1].expand_as(b)
    return b


def run_spec(spec, params, x, variant=()):
    """Runs a parsed spec on input x; returns {layer name: output tensor}, 'input' included.

    `params` maps "<layer>.weight"/"<layer>.bias" to tensors, as alexc names them.
    `variant` switches on deliberate mistakes (decoys, see Case) and is empty otherwise.
    Numbers are converted explicitly: PyYAML reads 1e-4 (no dot) as a string.
    """
    values = {"input": x}
    prev = "input"
    for layer in spec["layers"]:
        name, op = layer["name"], layer["op"]
        ins = layer.get("inputs", prev)  # default: the previous layer
        xs = [values[i] for i in ([ins] if isinstance(ins, str) else ins)]
        a = xs[0]
        if op == "conv":
            w = params[name + ".weight"]
            stride = int(layer.get("stride", 1))
            y = conv(a, w, bias_of(params, layer, variant), stride, int(layer.get("groups", 1)),
                     pads_of(layer, a, w.shape[2], stride, variant))
        elif op == "relu":
            y = F.relu(a)
        elif op == "lrn":
            y = lrn(a, int(layer["size"]), float(layer["alpha"]), float(layer["beta"]),
                    float(layer["k"]), int(layer.get("groups", 1)), variant)
        elif op == "maxpool":
            kernel = int(layer["kernel"])
            stride = int(layer.get("stride", kernel))  # PyTorch's default
            y = maxpool(a, kernel, stride, pads_of(layer, a, kernel, stride, variant),
                        bool(layer.get("ceil_mode", False)), variant)
        elif op == "fc":
            y = F.linear(a, params[name + ".weight"], bias_of(params, layer, variant))
        elif op == "dropout":  # inference: the identity
            y = a
        elif op == "flatten":
            y = torch.flatten(a, 1)
        elif op == "concat":  # along channels (dim 1), in the order listed
            y = torch.cat(xs, dim=1)
        elif op == "softmax":
            y = F.softmax(a, dim=1)
        else:
            sys.exit(f"layer {name}: op '{op}' has no PyTorch translation here; add one")
        values[name] = y
        prev = name
    return values


def rel_err(got, want):
    """compare() of compiler/tools/cli.c: max|got - want| / max|want|."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = np.abs(want).max()
    diff = np.abs(got - want).max()
    return diff / scale if scale > 0 else diff


# ---------------------------------------------------------------- one case

def alexc_run(alexc, *args):
    subprocess.run([alexc, *args], check=True, stdout=subprocess.DEVNULL)


def make_case(case, alexc, dtype):
    out_dir = os.path.join(HERE, case.name)
    # Start from an empty directory so outputs that a case no longer records go away.
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    if case.spec_text is not None:
        spec_path = os.path.join(out_dir, "spec.yaml")
        with open(spec_path, "w") as f:
            f.write(case.spec_text)
        manifest_spec = "spec.yaml"
    else:
        spec_path = case.spec_file
        manifest_spec = os.path.relpath(spec_path, out_dir)  # ../../../specs/NAME.yaml
    with open(spec_path) as f:
        spec = yaml.safe_load(f)

    # Weights and input from alexc itself, so torch sees exactly what `golden check`
    # will regenerate from the seeds.
    with tempfile.TemporaryDirectory() as tmp:
        wpath, xpath = os.path.join(tmp, "w.safetensors"), os.path.join(tmp, "x.npy")
        alexc_run(alexc, "init", spec_path, "--seed", str(case.seed), "--scheme", case.init,
                  "-o", wpath)
        alexc_run(alexc, "input", spec_path, "--seed", str(case.input_seed),
                  "--batch", str(case.batch), "-o", xpath)
        params = {k: torch.from_numpy(v).to(dtype) for k, v in read_safetensors(wpath).items()}
        x = torch.from_numpy(np.load(xpath)).to(dtype)

    with torch.no_grad():
        values = run_spec(spec, params, x)
        for decoy in case.decoys:
            wrong = run_spec(spec, params, x, variant={decoy})
            seen = max(rel_err(wrong[l].numpy(), values[l].numpy()) for l in case.outputs)
            if seen < 100 * TOLERANCE:
                sys.exit(f"{case.name}: the decoy '{decoy}' changes the outputs by only "
                         f"{seen:.2g}; this case would not catch that mistake")
            print(f"  {case.name}: decoy {decoy} would show as rel err {seen:.3g}")

    lines = [f"# Golden test computed by PyTorch {torch.__version__} ({dtype_name(dtype)}) with",
             "# tests/golden/make_goldens.py; do not edit, regenerate. Check: alexc golden check DIR",
             f"spec: {manifest_spec}",
             f"seed: {case.seed}",
             f"init: {case.init}",
             f"batch: {case.batch}",
             f"input_seed: {case.input_seed}",
             f"tolerance: {TOLERANCE:g}",
             "outputs:"]
    for layer in case.outputs:
        y = values[layer].numpy().astype(np.float32)  # (N, C, H, W) or (N, features)
        np.save(os.path.join(out_dir, layer + ".npy"), y)
        lines.append(f"  - {{layer: {layer}, file: {layer}.npy}}")
    with open(os.path.join(out_dir, "golden.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")


def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alexc", default=os.path.join(ROOT, "build", "alexc"),
                    help="the alexc binary (default: build/alexc)")
    ap.add_argument("--case", action="append", help="regenerate only this case (repeatable)")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                    help="precision of the PyTorch computation (default float32; see above)")
    ap.add_argument("--no-check", action="store_true",
                    help="do not run `alexc golden check` on the result")
    args = ap.parse_args()
    alexc = os.path.abspath(args.alexc)
    dtype = getattr(torch, args.dtype)
    # Single-threaded torch: one summation order, so a regeneration on the same machine
    # reproduces the .npy files bit for bit and does not churn them in git.
    torch.set_num_threads(1)

    cases = CASES
    if args.case:
        unknown = set(args.case) - {c.name for c in CASES}
        if unknown:
            sys.exit(f"unknown case(s): {', '.join(sorted(unknown))}")
        cases = [c for c in CASES if c.name in args.case]
    for case in cases:
        make_case(case, alexc, dtype)
        print(f"wrote tests/golden/{case.name}")

    if args.no_check:
        return
    # The point of the exercise: does the reference executor agree with PyTorch?
    failed = []
    for case in cases:
        r = subprocess.run([alexc, "golden", "check", os.path.join(HERE, case.name)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        print(r.stdout, end="")
        if r.returncode != 0:
            failed.append(case.name)
    if failed:
        sys.exit(f"the reference executor disagrees with PyTorch on: {', '.join(failed)}. "
                 "Find the op that is wrong; do not loosen the tolerance.")
    print(f"all {len(cases)} cases agree with PyTorch within {TOLERANCE:g}")


if __name__ == "__main__":
    main()
