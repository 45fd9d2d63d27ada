#!/usr/bin/python3
"""Regenerate the training goldens in tests/train/golden/: steps of the paper's SGD
computed by PyTorch, for tests/train/test_steps.c to check the trainer against.

For each case below this script

  1. asks the built `alexc` for the initial weights (`alexc init SPEC --seed SEED
     --scheme fan-in`) and for STEPS batches of inputs at once (`alexc input SPEC
     --seed INPUT_SEED --batch STEPS*BATCH`: step s takes images s*BATCH .. (s+1)*BATCH-1),
     in a temporary directory (test_steps.c regenerates both with weights_init and the
     generator behind `alexc input`);
  2. labels global example i as (7*i + 3) % classes;
  3. runs the network in PyTorch, layer by layer through the spec -> torch translator of
     tests/golden/make_goldens.py (run_spec, one layer at a time), except dropout, which
     is training-mode inverted dropout, y = x * mask / (1 - p), with the mask of the
     C trainer (dropout_mask in compiler/train/philox.c) recomputed here by an independent
     numpy Philox4x32-10 (checked against Random123's known-answer vectors on every run):
     layer L at step s, over the (batch, features) tensor, seed TRAIN_SEED;
  4. takes the mean softmax cross-entropy of the logits (the input of the spec's final
     softmax), its gradients by autograd, and applies the paper's SGD, written by hand:
     v <- 0.9 v - 0.0005 lr w - lr dL/dw; w <- w + v (v starts at 0, every parameter,
     weights and biases alike), for 20 steps at lr 0.01 (mini_alexnet) or 5 steps at
     lr 1e-4 (AlexNet, whose dynamics at batch 2 amplify rounding: see ALEXNET below);
  5. writes tests/train/golden/CASE/: `manifest` (key: value lines), `losses.npy` (the
     per-step losses, float64, each computed before its step's update), and the final
     weights: `final.safetensors` with every tensor (float32) for the small net, or
     `final_sample.safetensors` for AlexNet, holding per tensor the 1-D vector of its
     elements at flat indices 0, stride, 2*stride, ... with stride = ceil(elems / 4096),
     so at most 4096 samples a tensor (the manifest says `sample_max: 4096`).

Precision: float64 throughout (weights, inputs, activations, gradients, momenta), so
the golden is the exact answer to within float64 rounding; the results are then stored
as float32 (losses as float64). The C trainer keeps float32 weights and momenta and its
kernels round each activation to float32: that is what the 1e-4 tolerance absorbs.
torch runs single-threaded so that a regeneration reproduces the files.

LRN: our spec's alpha is not divided by size; run_spec gives torch alpha * size (see
tests/golden/make_goldens.py).

Usage (Debian's Python, which has PyTorch; from anywhere):
    /usr/bin/python3 tests/train/make_train_golden.py --alexc build/alexc [--case NAME]
    /usr/bin/python3 tests/train/make_train_golden.py --mask-vectors   # data for test_philox.c
"""

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))  # tests/train
ROOT = os.path.dirname(os.path.dirname(HERE))
STEPS = 20
LR = 0.01
MOMENTUM = 0.9
WEIGHT_DECAY = 0.0005
SAMPLE_MAX = 4096


class Case:
    def __init__(self, name, spec, batch, seed, input_seed, train_seed, init="fan-in",
                 steps=STEPS, lr=LR, sample=False):
        self.name, self.spec, self.batch, self.init = name, spec, batch, init
        self.steps, self.lr = steps, lr
        self.seed, self.input_seed, self.train_seed, self.sample = seed, input_seed, train_seed, sample


# ALEXNET. The golden must be a well-conditioned function of its inputs: test_steps.c
# compares float32 kernels with this float64 result at 1e-4, so rounding differences of
# ~1e-7 must not be amplified by the training dynamics. mini_alexnet is fine for 20 steps
# at the paper's lr 0.01 (float32 torch and the C kernels stay within 5e-7 of float64).
# AlexNet at batch 2 with labels that are all different (1000 classes) is not:
#   - fan-in init, lr 0.01: the loss goes 12 -> 473 -> ... -> NaN at step 8;
#   - the spec's (the paper's) init, lr 0.01: losses of 40-400, and float32 torch ends
#     O(1) away from float64 (chaotic);
#   - fan-in, lr 1e-4 or 1e-5, 20 steps: float32 torch leaves float64 by a factor of about
#     3 a step from step ~7 (1e-3 on the losses, 0.1 on fc7.bias by step 20), because with
#     momentum 0.9 the fc layers' curvature (4096-wide inputs) is near the edge of
#     stability;
#   - fan-in, lr 1e-4, the first 5 steps: float32 torch stays within ~1e-6 of float64,
#     and every tensor still moves (the biases from zero), so that is the AlexNet case.
# train_seed has its high word set, so that Philox's key[1] (seed >> 32) is exercised.
CASES = [
    Case("mini_alexnet", "mini-alexnet.yaml", batch=8, seed=41, input_seed=42,
         train_seed=(5 << 32) + 43),
    # AlexNet at batch 2 cannot take the paper's lr for 20 steps (see ALEXNET below).
    Case("alexnet", "alexnet.yaml", batch=2, seed=51, input_seed=52,
         train_seed=(7 << 32) + 53, steps=5, lr=1e-4, sample=True),
]


# ---------------------------------------------------------------- Philox4x32-10 in numpy

M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
MASK32 = np.uint64(0xFFFFFFFF)
SHIFT32 = np.uint64(32)


def philox4x32_10(ctr, key):
    """Random123's philox4x32_R(10, ctr, key), vectorised: ctr is 4 arrays (or ints) of
    32-bit words held in uint64 (so that the 32x32 products are exact), key 2 ints."""
    c0, c1, c2, c3 = (np.asarray(c, np.uint64) & MASK32 for c in ctr)
    k0, k1 = int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF
    for r in range(10):
        if r:  # the key is bumped between rounds
            k0, k1 = (k0 + W0) & 0xFFFFFFFF, (k1 + W1) & 0xFFFFFFFF
        p0, p1 = np.uint64(M0) * c0, np.uint64(M1) * c2
        c0, c1, c2, c3 = ((p1 >> SHIFT32) ^ c1 ^ np.uint64(k0), p1 & MASK32,
                          (p0 >> SHIFT32) ^ c3 ^ np.uint64(k1), p0 & MASK32)
    return c0, c1, c2, c3


# Random123's kat_vectors for philox4x32 10: counter, key, output.
KAT = [((0, 0, 0, 0), (0, 0), (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
       ((0xffffffff,) * 4, (0xffffffff,) * 2, (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
       ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
        (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1))]


def check_kat():
    for ctr, key, want in KAT:
        got = tuple(int(w) for w in philox4x32_10(ctr, key))
        if got != want:
            sys.exit(f"numpy Philox fails Random123's vector {ctr} {key}: {got} != {want}")


def dropout_layer_key(layer):
    """fnv1a-64 of the name (compiler/util.c), folded to 32 bits: low ^ high."""
    h = 0xcbf29ce484222325
    for byte in layer.encode():
        h = ((h ^ byte) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return (h ^ (h >> 32)) & 0xFFFFFFFF


def dropout_mask(seed, step, layer, n, p):
    """The keep mask of alexc.h: element i's draw is word 0 of philox(ctr = {i mod 2^32,
    i >> 32, step mod 2^32, layer_key}, key = {seed mod 2^32, seed >> 32}); u = (word >> 8)
    * 2^-24; kept when u >= p. Returns a bool array of n."""
    i = np.arange(n, dtype=np.uint64)
    ctr = (i & MASK32, i >> SHIFT32, np.full(n, step & 0xFFFFFFFF, np.uint64),
           np.full(n, dropout_layer_key(layer), np.uint64))
    word = philox4x32_10(ctr, (seed & 0xFFFFFFFF, seed >> 32))[0]
    u = (word >> np.uint64(8)).astype(np.float64) * 2.0 ** -24
    return u >= p


def mask_vectors():
    """Prints the expected data that tests/train/test_philox.c pastes."""
    for name in ["drop5", "drop6", "drop7", "", "a-much-longer.layer_name"]:
        print(f'{{"{name}", 0x{dropout_layer_key(name):08x}u}},')
    for seed, step, layer, n, p in [((5 << 32) + 43, 7, "drop6", 100, 0.5),
                                    (0, 0, "drop5", 100, 0.3),
                                    (0xFFFFFFFFFFFFFFFF, 0xFFFFFFFF, "fc", 100, 0.9)]:
        m = dropout_mask(seed, step, layer, n, p)
        print(f'{{{seed}ull, {step}ull, "{layer}", {p}, "{"".join("1" if b else "0" for b in m)}"}},')


# ---------------------------------------------------------------- the network in torch

def load_translator():
    """tests/golden/make_goldens.py's run_spec and read_safetensors."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "golden"))
    import make_goldens
    return make_goldens


def logits_of(mg, spec, params, x, step, train_seed):
    """The training-mode forward pass up to the input of the final softmax."""
    layers = spec["layers"]
    if layers[-1]["op"] != "softmax":
        sys.exit("this script expects the spec to end with a softmax")
    values, prev = {"input": x}, "input"
    for layer in layers[:-1]:
        name, op = layer["name"], layer["op"]
        ins = layer.get("inputs", prev)
        xs = [values[i] for i in ([ins] if isinstance(ins, str) else ins)]
        if op == "dropout":
            p = float(layer["p"])
            a = xs[0]
            if a.dim() != 2:
                sys.exit(f"layer {name}: dropout of a rank-{a.dim() - 1} tensor")
            m = dropout_mask(train_seed, step, name, a.numel(), p).reshape(a.shape)
            y = a * torch.from_numpy(m.astype(np.float64)).to(a.dtype) / (1.0 - p)
        elif op == "concat":
            y = torch.cat(xs, dim=1)
        else:  # one layer through the golden tests' translator
            one = dict(layer, inputs="input")
            y = mg.run_spec({"layers": [one]}, params, xs[0])[name]
        values[name] = y
        prev = name
    return values[prev]


def alexc_run(alexc, *args):
    subprocess.run([alexc, *args], check=True, stdout=subprocess.DEVNULL)


def make_case(case, alexc, mg):
    spec_path = os.path.join(ROOT, "specs", case.spec)
    with open(spec_path) as f:
        spec = yaml.safe_load(f)
    n_total = case.steps * case.batch
    with tempfile.TemporaryDirectory() as tmp:
        wpath, xpath = os.path.join(tmp, "w.safetensors"), os.path.join(tmp, "x.npy")
        alexc_run(alexc, "init", spec_path, "--seed", str(case.seed), "--scheme", case.init,
                  "-o", wpath)
        alexc_run(alexc, "input", spec_path, "--seed", str(case.input_seed),
                  "--batch", str(n_total), "-o", xpath)
        w0 = mg.read_safetensors(wpath)
        x_all = torch.from_numpy(np.load(xpath)).to(torch.float64)
    names = list(w0)  # file order; the update is per tensor, so order does not matter
    params = {k: torch.from_numpy(v).to(torch.float64).requires_grad_(True) for k, v in w0.items()}
    vel = {k: torch.zeros_like(v, requires_grad=False) for k, v in params.items()}
    labels_all = torch.tensor([(7 * i + 3) for i in range(n_total)], dtype=torch.int64)

    losses = []
    for step in range(case.steps):
        x = x_all[step * case.batch:(step + 1) * case.batch]
        logits = logits_of(mg, spec, params, x, step, case.train_seed)
        classes = logits.shape[1]
        labels = labels_all[step * case.batch:(step + 1) * case.batch] % classes
        loss = F.cross_entropy(logits, labels)  # mean over the batch
        grads = torch.autograd.grad(loss, [params[k] for k in names])
        with torch.no_grad():
            for k, g in zip(names, grads):
                w, v = params[k], vel[k]
                v.mul_(MOMENTUM).sub_(WEIGHT_DECAY * case.lr * w).sub_(case.lr * g)
                w.add_(v)
        losses.append(loss.item())
        if not math.isfinite(loss.item()) or loss.item() > 10 * losses[0]:
            sys.exit(f"{case.name}: training diverges (loss {loss.item():.3g} at step {step}); "
                     "such a golden would test nothing")
        print(f"  {case.name}: step {step:2d} loss {loss.item():.9f}", flush=True)

    out_dir = os.path.join(HERE, "golden", case.name)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    np.save(os.path.join(out_dir, "losses.npy"), np.array(losses, np.float64))
    final = {k: params[k].detach().numpy().astype(np.float32) for k in names}
    # How much of each tensor 20 steps moved, relative to its size: a kernel's error shows
    # in the final weights only as a fraction of this.
    for k in names:
        moved = np.abs(final[k] - w0[k]).max() / max(np.abs(final[k]).max(), 1e-30)
        print(f"  {case.name}: {k:14s} max|w - w0| / max|w| = {moved:.3g}")
    if case.sample:
        tensors, strides = {}, {}
        for k in names:
            flat = final[k].reshape(-1)
            strides[k] = max(1, math.ceil(flat.size / SAMPLE_MAX))
            tensors[k] = np.ascontiguousarray(flat[::strides[k]])
        weights_file = "final_sample.safetensors"
    else:
        tensors, weights_file = final, "final.safetensors"
    write_safetensors(os.path.join(out_dir, weights_file), tensors)
    lines = [f"# Training golden computed by PyTorch {torch.__version__} (float64) with",
             "# tests/train/make_train_golden.py; do not edit, regenerate. Checked by",
             "# tests/train/test_steps.c.",
             f"spec: ../../../../specs/{case.spec}",
             f"seed: {case.seed}",
             f"init: {case.init}",
             f"input_seed: {case.input_seed}",
             f"train_seed: {case.train_seed}",
             f"batch: {case.batch}",
             f"steps: {case.steps}",
             f"lr: {case.lr:g}",
             "labels: (7*i + 3) % classes",
             f"weights: {weights_file}"]
    if case.sample:
        lines.append(f"sample_max: {SAMPLE_MAX}")
    with open(os.path.join(out_dir, "manifest"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote tests/train/golden/{case.name}: losses {losses[0]:.6f} -> {losses[-1]:.6f}")


def write_safetensors(path, tensors):
    """float32 tensors in file order: 8-byte header length, JSON header, data."""
    import json
    import struct
    header, offset, blobs = {}, 0, []
    for k, v in tensors.items():
        raw = np.ascontiguousarray(v, "<f4").tobytes()
        header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alexc", default=os.path.join(ROOT, "build", "alexc"))
    ap.add_argument("--case", action="append", help="only this case (repeatable)")
    ap.add_argument("--mask-vectors", action="store_true",
                    help="print the expected layer keys and mask bits for test_philox.c")
    args = ap.parse_args()
    check_kat()
    if args.mask_vectors:
        mask_vectors()
        return
    global torch, F, yaml
    import torch
    import torch.nn.functional as F
    import yaml
    torch.set_num_threads(1)
    mg = load_translator()
    cases = CASES
    if args.case:
        unknown = set(args.case) - {c.name for c in CASES}
        if unknown:
            sys.exit(f"unknown case(s): {', '.join(sorted(unknown))}")
        cases = [c for c in CASES if c.name in args.case]
    for case in cases:
        make_case(case, os.path.abspath(args.alexc), mg)


if __name__ == "__main__":
    main()
