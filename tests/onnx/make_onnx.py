#!/usr/bin/python3
"""Make the ONNX models `alexc import` is tested on (tests/onnx/), from PyTorch.

For each case below this script exports a small network with torch.onnx.export
(opset 11 or 13) to tests/onnx/CASE.onnx, and saves an input batch CASE.in.npy and
PyTorch's output for it CASE.out.npy. tests/onnx/run.sh imports each model with
`alexc import`, runs the imported spec and weights with `alexc run`, and compares the
result with PyTorch's (`alexc compare`). CI has no PyTorch: it uses the checked-in
files, which this script regenerates.

The cases cover what the importer converts: convs with groups, stride and padding,
LRN (ONNX divides alpha by size, the spec does not), overlapping max pooling, Gemm
with transB=1 (nn.Linear), Gemm with transB=0 and alpha/beta (torch.addmm), MatMul+Add,
Flatten and Reshape, Dropout, the concat of two branches, and softmax. PyTorch exports
nn.LocalResponseNorm and, in eval mode, nn.Dropout as other ops (or none), so the
cases use small autograd Functions whose symbolic is ONNX's LRN or Dropout node.

Error cases: models the importer must refuse with a message naming the node
(unsupported ops, a dilated conv, ceil_mode pooling, a 2x2 average pool). Models
PyTorch cannot export (asymmetric pads, a tensor whose data is shorter than its dims,
a Dropout whose mask is the output; odd node names, opset 13's Dropout) are written
directly as protobuf by the small encoder at the end.

Usage:
    /usr/bin/python3 tests/onnx/make_onnx.py               # the checked-in cases
    /usr/bin/python3 tests/onnx/make_onnx.py --alexnet DIR  # torchvision's AlexNet
                                                           # (233 MB; not checked in)
"""

import argparse
import os
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))


class LRNFn(torch.autograd.Function):
    """PyTorch's LRN (alpha divided by size, like ONNX's), exported as one LRN node."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        return F.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def symbolic(g, x, size, alpha, beta, k):
        return g.op("LRN", x, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=k)


class LRN(nn.Module):
    def __init__(self, size, alpha, beta, k):
        super().__init__()
        self.args = (size, alpha, beta, k)

    def forward(self, x):
        return LRNFn.apply(x, *self.args)


class DropoutFn(torch.autograd.Function):
    """Inference dropout (the identity), exported as a Dropout node (opset 11: ratio)."""

    @staticmethod
    def forward(ctx, x, p):
        return x.clone()

    @staticmethod
    def symbolic(g, x, p):
        return g.op("Dropout", x, ratio_f=p)


class Dropout(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        return DropoutFn.apply(x, self.p)


class ConvLrnPool(nn.Module):
    """AlexNet's first block: strided conv, ReLU, LRN, overlapping pool; a grouped conv;
    an identity adaptive pool, flatten, Linear (Gemm transB=1), dropout, softmax."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, kernel_size=5, stride=2, padding=2), nn.ReLU(),
            LRN(5, 5e-3, 0.75, 2.0), nn.MaxPool2d(3, 2),
            nn.Conv2d(8, 12, kernel_size=3, padding=1, groups=2), nn.ReLU(),
            LRN(3, 0.3, 0.5, 1.5))
        self.classifier = nn.Sequential(Dropout(0.5), nn.Linear(12 * 4 * 4, 10))

    def forward(self, x):
        # An adaptive pool to the size it has, as torchvision's AlexNet: a 1x1 AveragePool.
        x = torch.flatten(F.adaptive_avg_pool2d(self.features(x), 4), 1)
        return F.softmax(self.classifier(x), dim=1)


class Branches(nn.Module):
    """Two branches joined by Concat, a padded pool, view() flattening (Reshape)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.b1 = nn.Conv2d(6, 4, 1)
        self.b3 = nn.Conv2d(6, 5, 3, padding=1, bias=False)
        self.fc = nn.Linear(9 * 4 * 4, 7)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = torch.cat([self.b1(x), self.b3(x)], 1)
        x = F.max_pool2d(F.relu(x), 3, stride=2, padding=1)
        return self.fc(x.view(x.size(0), -1))


class MatMuls(nn.Module):
    """MatMul+Add (a (in, out) weight), and Gemm with transB=0, alpha and beta."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, stride=3)
        self.w1 = nn.Parameter(torch.randn(27, 11) * 0.2)
        self.b1 = nn.Parameter(torch.randn(11))
        self.w2 = nn.Parameter(torch.randn(11, 5) * 0.3)
        self.b2 = nn.Parameter(torch.randn(5))

    def forward(self, x):
        x = torch.flatten(F.relu(self.conv(x)), 1)
        x = F.relu(torch.matmul(x, self.w1) + self.b1)
        return torch.addmm(self.b2, x, self.w2, beta=0.5, alpha=2.0)


# Models alexc must refuse (their outputs are not needed).
class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return F.avg_pool2d(torch.tanh(torch.sigmoid(self.conv(x))), 2, padding=1)


class Dilated(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, dilation=2)

    def forward(self, x):
        return F.relu(self.conv(x))


class CeilPool(nn.Module):  # the spec's ceil_mode: true, with PyTorch's "minus one" rule
    def forward(self, x):
        return F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True)


class AvgPool(nn.Module):  # alexc imports only the 1x1 AveragePool (the identity)
    def forward(self, x):
        return F.adaptive_avg_pool2d(x, 4)  # AveragePool 2x2, stride 2


CASES = {  # name: (model, input shape, opset, write the output)
    "conv_lrn_pool": (ConvLrnPool, (2, 3, 19, 19), 11, True),
    "branches": (Branches, (2, 3, 8, 8), 13, True),
    "matmul": (MatMuls, (3, 2, 9, 9), 11, True),
    "unsupported": (Unsupported, (1, 3, 8, 8), 11, False),
    "dilated": (Dilated, (1, 3, 8, 8), 11, False),
    "ceil_pool": (CeilPool, (2, 3, 8, 8), 11, True),
    "avg_pool": (AvgPool, (1, 3, 8, 8), 11, False),
}


def export(model, shape, opset, path):
    model.eval()
    x = torch.randn(*shape)
    torch.onnx.export(model, x, path, opset_version=opset, input_names=["input"],
                      output_names=["output"])
    with torch.no_grad():
        return x, model(x)


# ---- a minimal protobuf encoder, for models PyTorch will not write

def varint(v):
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def field(num, value):
    """Field `num`: an int is a varint, bytes/str are length-delimited."""
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(num << 3 | 2) + varint(len(value)) + value


def attr_ints(name, ints):  # AttributeProto: name 1, ints 8, type 20 (INTS = 7)
    return field(1, name) + b"".join(field(8, i) for i in ints) + field(20, 7)


def node(op, inputs, outputs, name, attrs=()):  # NodeProto: input 1, output 2, name 3, op 4, attr 5
    return (b"".join(field(1, i) for i in inputs) + b"".join(field(2, o) for o in outputs)
            + field(3, name) + field(4, op) + b"".join(field(5, a) for a in attrs))


def tensor(name, dims, values):  # TensorProto: dims 1, data_type 2 (FLOAT = 1), name 8, raw 9
    return (b"".join(field(1, d) for d in dims) + field(2, 1) + field(8, name)
            + field(9, struct.pack("<%df" % len(values), *values)))


def value_info(name, dims):  # ValueInfoProto: name 1, type 2 (TypeProto.tensor_type 1)
    shape = b"".join(field(1, field(1, d)) for d in dims)  # Dimension.dim_value 1
    return field(1, name) + field(2, field(1, field(1, 1) + field(2, shape)))


def attr_str(name, s):  # AttributeProto: s 4, type 20 (STRING = 3)
    return field(1, name) + field(4, s) + field(20, 3)


def attr_tensor(name, t):  # AttributeProto: t 5, type 20 (TENSOR = 4)
    return field(1, name) + field(5, t) + field(20, 4)


def model(nodes, inits, inp, out, opset=11):  # ModelProto: ir_version 1, graph 7, opset_import 8
    graph = (b"".join(field(1, n) for n in nodes) + field(2, "g")
             + b"".join(field(5, t) for t in inits) + field(11, value_info(*inp))
             + field(12, value_info(*out)))
    return field(1, 7) + field(7, graph) + field(8, field(2, opset))


def handmade():
    """Conv models with one defect each."""
    w = tensor("conv.weight", [4, 3, 3, 3], [0.1] * 108)
    short = tensor("conv.weight", [4, 3, 3, 3], [0.1] * 100)  # 8 values short
    inp, out = ("input", [1, 3, 8, 8]), ("y", [1, 4, 6, 6])
    conv = lambda pads: node("Conv", ["input", "conv.weight"], ["y"], "/conv/Conv",
                             [attr_ints("kernel_shape", [3, 3]), attr_ints("pads", pads)])
    # Names that are not spec names: a weight without ".weight" (through an Identity,
    # as PyTorch writes shared weights), a node path with spaces and colons, unnamed
    # nodes, a name over 64 characters.
    odd = [node("Identity", ["onnx::Conv_12"], ["w_alias"], ""),
           node("Conv", ["input", "w_alias"], ["c"], "weird/na me:1/Conv",
                [attr_ints("kernel_shape", [3, 3])]),
           node("Relu", ["c"], ["r1"], ""), node("Relu", ["r1"], ["r2"], ""),
           node("Relu", ["r2"], ["y"], "/" + "m" * 70 + "/Relu")]
    # Opset 13's Dropout: the ratio is an input (here a Constant's output), the mask an
    # output nothing reads.
    drop = [conv([0, 0, 0, 0]),
            node("Constant", [], ["ratio"], "/Constant",
                 [attr_tensor("value", tensor("", [], [0.25]))]),
            node("Dropout", ["y", "ratio"], ["z", "mask"], "/drop/Dropout")]
    # Padding the spec took over from ONNX: pads [top, left, bottom, right] = [0, 0, 1, 1],
    # and auto_pad SAME_UPPER with stride 2 (8 -> 4: one pixel of padding, at the bottom
    # and right).
    same = node("Conv", ["input", "conv.weight"], ["y"], "/conv/Conv",
                [attr_ints("kernel_shape", [3, 3]), attr_ints("strides", [2, 2]),
                 attr_str("auto_pad", "SAME_UPPER")])
    return {
        "same_upper": model([same], [w], inp, ("y", [1, 4, 4, 4])),
        "dropout13": model(drop, [w], inp, ("z", [1, 4, 6, 6]), opset=13),
        "dropout_mask": model(drop, [w], inp, ("mask", [1, 4, 6, 6]), opset=13),
        "odd_names": model(odd, [tensor("onnx::Conv_12", [4, 3, 3, 3], [0.1] * 108)], inp, out),
        "asym_pads": model([conv([0, 0, 1, 1])], [w], inp, ("y", [1, 4, 7, 7])),
        "same_lower": model([node("Conv", ["input", "conv.weight"], ["y"], "/conv/Conv",
                                  [attr_ints("kernel_shape", [3, 3]), attr_ints("strides", [2, 2]),
                                   attr_str("auto_pad", "SAME_LOWER")])], [w], inp, ("y", [1, 4, 4, 4])),
        "short_tensor": model([conv([0, 0, 0, 0])], [short], inp, out),
        "good_conv": model([conv([0, 0, 0, 0])], [w], inp, out),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alexnet", metavar="DIR",
                    help="export torchvision's AlexNet (random weights) to DIR instead")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    if args.alexnet:
        import torchvision
        os.makedirs(args.alexnet, exist_ok=True)
        base = os.path.join(args.alexnet, "alexnet")
        x, y = export(torchvision.models.alexnet(), (2, 3, 224, 224), 11, base + ".onnx")
        np.save(base + ".in.npy", x.numpy())
        np.save(base + ".out.npy", y.numpy())
        print("wrote", base + ".onnx", base + ".in.npy", base + ".out.npy")
        return
    for name, (cls, shape, opset, save) in CASES.items():
        base = os.path.join(HERE, name)
        x, y = export(cls(), shape, opset, base + ".onnx")
        if save:
            np.save(base + ".in.npy", x.numpy())
            np.save(base + ".out.npy", y.numpy())
        print("wrote", base + ".onnx")
    for name, data in handmade().items():
        with open(os.path.join(HERE, name + ".onnx"), "wb") as f:
            f.write(data)
        print("wrote", os.path.join(HERE, name + ".onnx"))
    # What PyTorch computes for the hand-written padded convs (F.pad, then the conv).
    w = torch.full((4, 3, 3, 3), 0.1)
    x = torch.randn(1, 3, 8, 8)
    for name, pad, stride in [("asym_pads", (0, 1, 0, 1), 1), ("same_upper", (0, 1, 0, 1), 2)]:
        y = F.conv2d(F.pad(x, pad), w, stride=stride)  # pad: (left, right, top, bottom)
        np.save(os.path.join(HERE, name + ".in.npy"), x.numpy())
        np.save(os.path.join(HERE, name + ".out.npy"), y.numpy())


if __name__ == "__main__":
    main()
