#!/usr/bin/env python3
"""Rebuild a trained supermask model in PyTorch and evaluate it on its test set.

    supermask export RUN_DIR --format safetensors --out model.safetensors
    python3 benches/python/from_supermask.py model.safetensors --data data [--json]

The file holds each weight layer's effective weight W * g(M) (float32, as `NAME.weight`), the
batch-norm tensors, and in its header's `__metadata__` the model description with the
architecture's steps (linear, conv, batch-norm, elu, max-pool, flatten, global-avg-pool,
residual). `build(meta, tensors)` returns a `torch.nn.Module` that computes what supermask's
evaluation computes, so the model can be studied, fine-tuned or compared in PyTorch. Only
`torch` is needed (the safetensors file is parsed here); the data loading for `--data`
(IDX MNIST / Fashion-MNIST, per-image standardization) is `sm_torch.load_idx`.
"""
import argparse
import json
import os
import struct
import sys

import torch
import torch.nn.functional as F

BN_EPS = 1e-3  # Keras' epsilon, as supermask's batch norm


def read_safetensors(path):
    """(metadata dict, {name: float32 tensor}) of a safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    tensors = {}
    for name, t in header.items():
        if t["dtype"] != "F32":
            raise ValueError(f"{path}: tensor {name} is {t['dtype']}, expected F32")
        start, end = t["data_offsets"]
        buf = bytearray(data[base + start:base + end])
        tensors[name] = torch.frombuffer(buf, dtype=torch.float32).reshape(t["shape"])
    return meta, tensors


class SupermaskNet(torch.nn.Module):
    """The exported architecture's forward pass over batches (channels first)."""

    def __init__(self, arch, tensors):
        super().__init__()
        self.arch = arch
        self.alpha = float(arch["elu_alpha"])
        for name, t in tensors.items():
            self.register_buffer(name.replace(".", "__"), t.clone())

    def t(self, name):
        return getattr(self, name.replace(".", "__"))

    def run(self, steps, x):
        for s in steps:
            op = s["op"]
            if op == "linear":
                x = x.flatten(1) @ self.t(s["name"] + ".weight").T
            elif op == "conv":
                x = F.conv2d(x, self.t(s["name"] + ".weight"), stride=s["stride"],
                             padding=s["padding"])
            elif op == "batch-norm":
                x = self.batch_norm(x, s["name"], s["mode"])
            elif op == "elu":
                x = F.elu(x, self.alpha)
            elif op == "max-pool":
                x = F.max_pool2d(x, s["k"], s["stride"], s["padding"])
            elif op == "flatten":
                x = x.flatten(1)
            elif op == "global-avg-pool":
                x = x.mean(dim=(2, 3))
            elif op == "residual":
                main = self.run(s["main"], x)
                x = main + (self.run(s["shortcut"], x) if s["shortcut"] else x)
            else:
                raise ValueError(f"unknown step {op}")
        return x

    def batch_norm(self, x, name, mode):
        if mode == "none":  # the authors' frozen BN: x / sqrt(1 + eps)
            return x / (1.0 + BN_EPS) ** 0.5
        shape = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
        mean = self.t(name + ".running_mean").reshape(shape)
        var = self.t(name + ".running_var").reshape(shape)
        y = (x - mean) / torch.sqrt(var + BN_EPS)
        if mode == "learnable":
            y = y * self.t(name + ".gamma").reshape(shape) + self.t(name + ".beta").reshape(shape)
        return y

    def forward(self, x):
        return self.run(self.arch["steps"], x.reshape(x.shape[0], *self.arch["input"]))


def build(path):
    """(model description, SupermaskNet) of an exported safetensors file."""
    meta, tensors = read_safetensors(path)
    desc = json.loads(meta["supermask"])
    return desc, SupermaskNet(desc["arch"], tensors).eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--data", default="data", help="data root (holds mnist/ or fashion-mnist/)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import sm_torch

    desc, net = build(a.model)
    x, y = sm_torch.load_idx(os.path.join(a.data, desc["dataset"]), "test")
    with torch.no_grad():
        pred = torch.cat([net(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    acc = (pred == y).double().mean().item()
    if a.json:
        print(json.dumps({"test_acc": acc, "n": len(y), "predictions": pred.tolist()}))
    else:
        print(f"{a.model}: {desc['dataset']} test accuracy {acc:.4f} over {len(y)} images")


if __name__ == "__main__":
    main()
