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
     lr 1e-4 (AlexNet, where float32 rounding flips a ReLU or max-pool decision every
     few images: see ALEXNET below);
  4b. runs the same steps in float32 torch beside them, and refuses to write a golden
     that float32 leaves by more than 1e-5 (test_steps.c's metric, every tensor and the
     loss, after every step): it prints the worst tensor and step, and how far each
     tensor moved from its initial value;
  5. writes tests/train/golden/CASE/: `manifest` (key: value lines), `losses.npy` (the
     per-step losses, float64, each computed before its step's update), and the final
     weights: `final.safetensors` with every tensor (float32) for the small net, or
     `final_sample.safetensors` for AlexNet, holding per tensor the 1-D vector of its
     elements at flat indices 0, stride, 2*stride, ... with stride = ceil(elems / 4096),
     so at most 4096 samples a tensor (the manifest says `sample_max: 4096`).

Precision: float64 throughout (weights, inputs, activations, gradients, momenta), so
the golden is the exact answer to within float64 rounding; the results are then stored
as float32 (losses as float64). The C trainer keeps float32 weights and momenta and its
kernels round each activation to float32: that is what the 1e-4 tolerance absorbs, and
why step 4b asks float32 torch to stay ten times closer than that.
torch runs single-threaded so that a regeneration reproduces the files.

LRN: our spec's alpha is not divided by size; run_spec gives torch alpha * size (see
tests/golden/make_goldens.py).

Usage (Debian's Python, which has PyTorch; from anywhere):
    /usr/bin/python3 tests/train/make_train_golden.py --alexc build/alexc [--case NAME]
    /usr/bin/python3 tests/train/make_train_golden.py --mask-vectors   # data for test_philox.c
    # trying a case: overrides (--batch, --steps, --lr, --init, seeds), --give-up ERR to
    # stop once float32 is that far off, --break WRONG to see whether test_steps.c's
    # tolerance catches a deliberately wrong gradient; none of these writes anything
    /usr/bin/python3 tests/train/make_train_golden.py --case alexnet --steps 20 --lr 1e-5 \
        --give-up 1e-3 --break 'conv1.weight*1.01' --break no-decay
"""

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))  # tests/train
ROOT = os.path.dirname(os.path.dirname(HERE))
STEPS = 20
LR = 0.01
MOMENTUM = 0.9
WEIGHT_DECAY = 0.0005
SAMPLE_MAX = 4096
TEST_TOLERANCE = 1e-4  # test_steps.c's TOLERANCE
CONDITIONING = 1e-5  # float32 torch against float64 torch, worst over tensors and steps


class Case:
    def __init__(self, name, spec, batch, seed, input_seed, train_seed, init="fan-in",
                 steps=STEPS, lr=LR, sample=False):
        self.name, self.spec, self.batch, self.init = name, spec, batch, init
        self.steps, self.lr = steps, lr
        self.seed, self.input_seed, self.train_seed, self.sample = seed, input_seed, train_seed, sample


# ALEXNET. The golden must be a well-conditioned function of its inputs: test_steps.c
# compares float32 kernels with this float64 result at 1e-4, so rounding differences of
# ~1e-7 must not be amplified by the training dynamics. make_case checks this for every
# case: it runs the same steps in float32 torch beside the float64 golden and refuses to
# write the golden unless float32 stays within CONDITIONING (1e-5) of float64 on the loss
# and on every tensor (test_steps.c's metric) after every step. mini_alexnet passes: 20
# steps of batch 8 at the paper's lr 0.01, worst 1.3e-6 (fc6.bias after step 19).
#
# AlexNet does not pass for 20 steps, in any case tried (labels all different, 1000
# classes; `--dry-run --give-up 1e-3` and overrides; torch single-threaded on a shared
# 2-core machine, float64 + float32 together 25-60 s a step at batch 2):
#
#   init    batch  lr     steps  float32 against float64, worst (tensor, after step)
#   fan-in  2      1e-4   5      1.3e-6 (conv1.bias, 1)                   <- the golden, 191 s
#   fan-in  2      1e-4   20     1.3e-6 to step 5, 4.0e-4 (conv2.bias, 6), 1.0e-3 by step 10
#   fan-in  1      1e-4   20     1.2e-6 to step 3, 4.5e-3 (conv3.bias, 4)
#   fan-in  2      1e-5   20     1.1e-6 at step 0, 5.8e-3 (conv3.bias, 1)
#   fan-in  2      1e-6   20     1.8e-6 to step 4, 5.7e-5 (conv3.bias, 5), 8.5e-5 at 6
#   fan-in  4      1e-4   20     1.0e-2 (conv3.bias, 0)
#   spec    2      1e-4   20     1.5e-3 (conv3.bias, 0); 5.1e-3 (conv3.bias, 11); conv1.bias 2e-3
#   spec    2      1e-5   20     1.5e-3 (conv3.bias, 0)
#   earlier: fan-in, lr 0.01: the loss goes 12 -> 473 -> NaN at step 8; spec init, lr 0.01:
#   losses 40-400, float32 O(1) away; fan-in, lr 1e-4: 0.12 on some tensor by step 20;
#   fan-in, inputs scaled by 0.1 (not a manifest option), lr 1e-3: 1.3e-6 for 6 steps,
#   then 1.5e-3 on conv3.bias at step 6 and 0.1 by step 18.
#
# The cause is not the learning rate but single decisions: AlexNet takes some 10^6 ReLU
# and max-pool decisions per image, and now and then one of them lies within float32
# rounding of its kink (a pre-activation within ~1e-7 of zero, two max-pool candidates
# within an ulp). Float32 then decides it the other way, and the gradient through that one
# element is routed differently: a jump of 5e-5 to 1e-2 relative on the zero-initialised
# biases below it (each bias's whole value is the sum of its gradients, so it sees one
# term's error in full). Counting the decisions of a float32 and a float64 forward pass
# at step 0: fan-in, batch 2: none differ; fan-in, batch 4: one relu3 sign and one pool2
# argmax (the 1.0e-2 above); spec init, batch 2: five pool5 argmaxes (the spec's bias 1
# makes conv5's outputs 1 + small, so near-ties abound), which move conv3.bias and
# conv1.bias (both zero-initialised) by 1.5e-3 and 2e-3 at step 0, whatever the lr. Such
# a flip came within the first 4 to 14 images in every run above (each step takes new
# images; a smaller lr does not avoid it), so 20 steps of any batch almost surely hold
# one, in float32 torch and, independently, in the C kernels: a 20-step golden that
# passed by a lucky seed would fail test_steps.c by chance. So the AlexNet case keeps
# its 5 steps of batch 2 (the same run flips at step 6).
#
# How much each tensor moves bounds what the test can see: a gradient off by a factor
# 1 + e moves a tensor's final value off by about e times its "moved" column. In the
# AlexNet case the biases move by their whole value (from zero), the weights by 1e-3
# (conv1) to 3e-2 (fc8) of themselves. A weight's own error can then hide (conv1.weight's
# gradient times 1.01 leaves conv1.weight within 1.2e-5), but the changed weights change
# the later steps' activations and so the zero-initialised biases, which see it in full.
# `--break` here, and the same breaks planted (locally) in the C trainer's update for
# test_steps.c's cpu run, against this golden after its 5 steps (worst tensor; the two
# agree to two digits where both ran):
#   conv1.weight gradient * 1.01:  0.016 (conv5.bias): fails
#   conv1.weight gradient * 1.1:   0.016 (conv5.bias): fails
#   fc8.weight gradient * 1.01:    0.002 (conv4.bias; fc8.weight itself 2.8e-4): fails (C)
#   conv3.bias gradient * 1.01:    0.010 (conv3.bias): fails
#   no weight decay:               1.4e-6 (conv3.bias): PASSES (Python). At lr 1e-4 the decay
#     term (0.0005 lr w a step) is below float32 rounding over 5 steps; only mini_alexnet
#     (lr 0.01, where dropping it costs 0.57 on fc6.bias) checks the weight decay.
# train_seed has its high word set, so that Philox's key[1] (seed >> 32) is exercised.
CASES = [
    Case("mini_alexnet", "mini-alexnet.yaml", batch=8, seed=41, input_seed=42,
         train_seed=(5 << 32) + 43),
    # AlexNet: 5 steps only; no 20-step case is well-conditioned (see ALEXNET above).
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


def rel_err(got, want):
    """compare() of compiler/tools/cli.c, as test_steps.c applies it to each tensor:
    max|got - want| / max|want| (max|got - want| when want is all zero)."""
    got, want = got.detach().to(torch.float64), want.detach().to(torch.float64)
    diff, scale = (got - want).abs().max().item(), want.abs().max().item()
    return diff / scale if scale > 0 else diff


class Run:
    """One training run of a case in one precision: parameters, momenta and the step.
    `grad_scale` ({tensor: factor}) and `decay` exist to make deliberately wrong runs
    (--break), which must fail test_steps.c's tolerance against the right one."""

    def __init__(self, w0, dtype, grad_scale=None, decay=WEIGHT_DECAY):
        self.dtype, self.grad_scale, self.decay = dtype, grad_scale or {}, decay
        self.names = list(w0)  # file order; the update is per tensor
        self.params = {k: torch.from_numpy(v).to(dtype, copy=True).requires_grad_(True)
                       for k, v in w0.items()}  # a copy: never an alias of w0
        self.vel = {k: torch.zeros_like(v, requires_grad=False) for k, v in self.params.items()}

    def step(self, mg, spec, case, step, x_all, labels_all):
        """One SGD step; returns the loss before the update (a float)."""
        x = x_all[step * case.batch:(step + 1) * case.batch].to(self.dtype)
        logits = logits_of(mg, spec, self.params, x, step, case.train_seed)
        classes = logits.shape[1]
        labels = labels_all[step * case.batch:(step + 1) * case.batch] % classes
        loss = F.cross_entropy(logits, labels)  # mean over the batch
        grads = torch.autograd.grad(loss, [self.params[k] for k in self.names])
        with torch.no_grad():
            for k, g in zip(self.names, grads):
                w, v = self.params[k], self.vel[k]
                g = g * self.grad_scale[k] if k in self.grad_scale else g
                v.mul_(MOMENTUM).sub_(self.decay * case.lr * w).sub_(case.lr * g)
                w.add_(v)
        return loss.item()


def parse_break(text, names):
    """--break: 'TENSOR*FACTOR' (that tensor's gradient scaled) or 'no-decay'."""
    if text == "no-decay":
        return {}, 0.0
    name, _, factor = text.partition("*")
    if name not in names or not factor:
        sys.exit(f"--break '{text}': want TENSOR*FACTOR (one of {', '.join(names)}) or no-decay")
    return {name: float(factor)}, WEIGHT_DECAY


def make_case(case, alexc, mg, write=True, breaks=(), give_up=math.inf):
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
        x_all = torch.from_numpy(np.load(xpath))  # float32, exact in float64 too
    names = list(w0)
    labels_all = torch.tensor([(7 * i + 3) for i in range(n_total)], dtype=torch.int64)
    print(f"{case.name}: {case.spec}, init {case.init}, batch {case.batch}, {case.steps} steps, "
          f"lr {case.lr:g}", flush=True)

    # The golden (float64), and beside it the same steps in float32: the conditioning check.
    gold, single = Run(w0, torch.float64), Run(w0, torch.float32)
    broken = [(b, Run(w0, torch.float64, *parse_break(b, names))) for b in breaks]
    losses, worst = [], (0.0, "", -1)  # (rel err, tensor, step) of float32 against float64
    t0 = time.time()
    for step in range(case.steps):
        loss = gold.step(mg, spec, case, step, x_all, labels_all)
        loss32 = single.step(mg, spec, case, step, x_all, labels_all)
        for _, run in broken:
            run.loss = run.step(mg, spec, case, step, x_all, labels_all)
            run.worst_loss = max(getattr(run, "worst_loss", 0.0), abs(run.loss - loss) / abs(loss))
        losses.append(loss)
        if not math.isfinite(loss) or loss > 10 * losses[0]:
            sys.exit(f"{case.name}: training diverges (loss {loss:.3g} at step {step}); "
                     "such a golden would test nothing")
        errs = [(abs(loss32 - loss) / abs(loss), "loss")]
        errs += [(rel_err(single.params[k], gold.params[k]), k) for k in names]
        e, where = max(errs)
        if not (e <= worst[0]):
            worst = (e, where, step)
        print(f"  {case.name}: step {step:2d} loss {loss:.9f}  float32: {e:.3g} ({where})  "
              f"[{time.time() - t0:.0f} s]", flush=True)
        if e > give_up:
            print(f"  {case.name}: giving up after step {step} (--give-up {give_up:g})")
            break

    final = {k: gold.params[k].detach().numpy().astype(np.float32) for k in names}
    # How much of each tensor the steps moved, relative to its size: a kernel's error shows
    # in the final weights only as a fraction of this (a gradient off by a factor 1 + e
    # moves a tensor off by about e times this), so a tensor that barely moves is not tested.
    print(f"  {case.name}: {'tensor':14s} {'moved':>9s} {'float32':>9s}")
    for k in names:
        moved = np.abs(final[k] - w0[k]).max() / max(np.abs(final[k]).max(), 1e-30)
        print(f"  {case.name}: {k:14s} {moved:9.3g} {rel_err(single.params[k], gold.params[k]):9.3g}")
    for text, run in broken:
        e, where = max((rel_err(run.params[k], gold.params[k]), k) for k in names)
        verdict = "fails" if e > TEST_TOLERANCE or run.worst_loss > TEST_TOLERANCE else "PASSES"
        print(f"  {case.name}: --break {text}: worst weight rel err {e:.3g} ({where}), worst loss "
              f"rel err {run.worst_loss:.3g}: {verdict} test_steps.c's {TEST_TOLERANCE:g}")
    ok = worst[0] <= CONDITIONING
    print(f"{case.name}: float32 PyTorch against float64: worst rel err {worst[0]:.3g} "
          f"({worst[1]} after step {worst[2]}; must be <= {CONDITIONING:g})"
          f"{'' if ok else ': ILL-CONDITIONED'}; {time.time() - t0:.0f} s", flush=True)
    if not ok:
        if write:
            sys.exit(f"{case.name}: refusing to write a golden that float32 rounding alone moves "
                     f"by more than {CONDITIONING:g}: pick a better-conditioned case")
        return False
    if not write:
        return True

    out_dir = os.path.join(HERE, "golden", case.name)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    np.save(os.path.join(out_dir, "losses.npy"), np.array(losses, np.float64))
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
             f"# float32 PyTorch stays within {worst[0]:.2g} of it (worst: {worst[1]} after step {worst[2]}).",
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
    return True


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
    ap.add_argument("--dry-run", action="store_true",
                    help="run the check and print the tables, write nothing")
    ap.add_argument("--give-up", type=float, default=math.inf, metavar="ERR",
                    help="stop a case once float32 is this far from float64 (implies --dry-run)")
    ap.add_argument("--break", dest="breaks", action="append", default=[], metavar="WRONG",
                    help="also run a deliberately wrong float64 training ('TENSOR*FACTOR': that "
                         "gradient scaled; 'no-decay') and say whether test_steps.c's tolerance "
                         "catches it (repeatable)")
    for key, kind in [("batch", int), ("steps", int), ("lr", float), ("init", str), ("seed", int),
                      ("input_seed", int), ("train_seed", int)]:
        ap.add_argument("--" + key.replace("_", "-"), type=kind,
                        help=f"override the case's {key} (implies --dry-run)")
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
    overrides = {k: getattr(args, k) for k in ["batch", "steps", "lr", "init", "seed",
                                               "input_seed", "train_seed"]
                 if getattr(args, k) is not None}
    write = not (args.dry_run or overrides or args.breaks or args.give_up < math.inf)
    ok = True
    for case in cases:
        for k, v in overrides.items():
            setattr(case, k, v)
        ok &= make_case(case, os.path.abspath(args.alexc), mg, write, args.breaks, args.give_up)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
