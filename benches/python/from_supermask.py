#!/usr/bin/env python3
"""Rebuild a trained supermask model in PyTorch and evaluate it on its test set.

    supermask export RUN_DIR --format safetensors --out model.safetensors
    python3 benches/python/from_supermask.py model.safetensors --data data [--masked] [--json]

The file holds each weight layer's effective weight W * g(M) (float32, as `NAME.weight`), the
batch-norm tensors, each masked layer's frozen W (`NAME.frozen_weight`), scores M
(`NAME.scores`) and thresholds (`NAME.taus`, [tau_n, tau_p]), and in its header's
`__metadata__` the model description with the architecture's steps (linear, conv, batch-norm,
elu, max-pool, flatten, global-avg-pool, residual) and the masking config.

`build(path)` returns a `torch.nn.Module` that computes what supermask's evaluation computes
from the effective weights. `build(path, masked=True)` rebuilds the masked net instead: the
scores are `nn.Parameter`s, W is a frozen buffer, and every forward pass computes W * g(M) with
the straight-through gradient (dL/dM = dL/d(W g(M)) * W), so the mask can be trained further in
PyTorch; the thresholds stay at the checkpoint's values (a threshold schedule is supermask's).
g is the signed mask's (-1 if M <= tau_n, +1 if M >= tau_p, else 0), the binary mask's
(1 if M >= tau_p), the Bernoulli mask's evaluation mask (M >= 0), or edge-popup's and biprop's
per-layer top-k of |M| (the `int((1 - keep) n)` smallest |M| pruned, ties at lower positions
first). Edge-popup's and biprop's gradient goes through |M| (dL/dM = dL/dW_eff * W * sign(M),
sign(0) = +1), and biprop's effective weight is alpha * sign(W) * g(M) with
alpha = sum(|W| g(M)) / int(keep n), recomputed from the mask in every forward pass. Building
checks that the rebuilt effective weight equals the exported one exactly. Only `torch` is needed (the
safetensors file is parsed here); the data loading for `--data` (IDX MNIST / Fashion-MNIST,
per-image standardization) is `sm_torch.load_idx`.
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

    def __init__(self, arch, tensors, mask=None):
        super().__init__()
        self.arch = arch
        self.alpha = float(arch["elu_alpha"])
        self.mask = mask
        for name, t in tensors.items():
            if mask is not None and name.endswith(".scores"):
                self.register_parameter(name.replace(".", "__"), torch.nn.Parameter(t.clone()))
            elif mask is None and name.rsplit(".", 1)[-1] in ("frozen_weight", "scores", "taus"):
                continue
            else:
                self.register_buffer(name.replace(".", "__"), t.clone())

    def t(self, name):
        return getattr(self, name.replace(".", "__"))

    def weight(self, layer):
        """The layer's weight: the exported W * g(M), or, in a masked net, computed from M."""
        if self.mask is None or not hasattr(self, (layer + ".scores").replace(".", "__")):
            return self.t(layer + ".weight")
        w, m = self.t(layer + ".frozen_weight"), self.t(layer + ".scores")
        tau_n, tau_p = self.t(layer + ".taus").tolist()
        hard = g(self.mask, m.detach(), tau_n, tau_p)
        # Straight-through: the forward value is W * g(M), the gradient to M is dL/dW_eff * W
        # (times sign(M) for the masks that rank |M|).
        through = m - m.detach()
        kind = self.mask.get("type")
        if kind in TOP_K_MASKS:
            through = through * torch.where(m.detach() >= 0, 1.0, -1.0)
        value = w * hard
        if kind == "biprop":
            value = torch.sign(w) * biprop_alpha(w, hard, self.mask["keep"]) * hard
        return value + w * through

    def run(self, steps, x):
        for s in steps:
            op = s["op"]
            if op == "linear":
                x = x.flatten(1) @ self.weight(s["name"]).T
            elif op == "conv":
                x = F.conv2d(x, self.weight(s["name"]), stride=s["stride"],
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


TOP_K_MASKS = ("edge-popup", "biprop")


def top_k(m, keep):
    """Edge-popup's mask (hidden-networks' GetSubnet over |M|): 0 for the `int((1 - keep) n)`
    entries of smallest |M| (ties: lower positions first), 1 for the rest."""
    n = m.numel()
    j = int((1.0 - keep) * n)
    out = torch.ones(n, dtype=m.dtype)
    if j:
        out[torch.argsort(m.abs().flatten(), stable=True)[:j]] = 0.0
    return out.reshape(m.shape)


def biprop_alpha(w, hard, keep):
    """Biprop's per-layer scale: sum(|W| g(M)) / int(keep n) (chrundle/biprop's
    GetQuantnet_binary; at least 1 in the denominator), summed in float64, as supermask does."""
    denominator = max(int(keep * w.numel()), 1)
    kept = (w.abs() * hard).double().sum().item()
    return torch.tensor(kept / denominator, dtype=torch.float32)  # rounded to f32, as ours


def g(mask, m, tau_n, tau_p):
    """The hard mask g(M) of supermask's mask plugin `mask` (its evaluation mask)."""
    kind = mask.get("type")
    if kind in TOP_K_MASKS:
        return top_k(m, float(mask["keep"]))
    if kind == "signed":
        return (m >= tau_p).to(m.dtype) - (m <= tau_n).to(m.dtype)
    if kind == "binary":
        return (m >= tau_p).to(m.dtype)
    if kind == "bernoulli":
        return (m >= 0).to(m.dtype)
    raise ValueError(f"mask {kind!r} has no g here; build(path) runs its effective weights")


def build(path, masked=False):
    """(model description, SupermaskNet) of an exported safetensors file; with `masked`, the
    scores are trainable parameters and each forward pass applies g (see the module doc)."""
    meta, tensors = read_safetensors(path)
    desc = json.loads(meta["supermask"])
    mask = None
    if masked:
        masking = json.loads(meta.get("masking", "{}"))
        if masking.get("mode") != "masked" or not any(n.endswith(".scores") for n in tensors):
            raise ValueError(f"{path}: a dense model has no mask to rebuild; drop masked=True")
        mask = masking["mask"]
    net = SupermaskNet(desc["arch"], tensors, mask).eval()
    if masked:
        with torch.no_grad():
            for name in tensors:
                if name.endswith(".scores"):
                    layer = name[: -len(".scores")]
                    if not torch.equal(net.weight(layer), tensors[layer + ".weight"]):
                        raise ValueError(f"{path}: {layer}: W * g(M) differs from the exported "
                                         "effective weight")
                    if layer + ".alpha" in tensors:  # biprop: the checkpoint's alpha
                        w, m = tensors[layer + ".frozen_weight"], tensors[name]
                        alpha = biprop_alpha(w, top_k(m, float(mask["keep"])), mask["keep"])
                        if not torch.equal(alpha.reshape(-1), tensors[layer + ".alpha"]):
                            raise ValueError(f"{path}: {layer}: alpha {alpha.item()} differs "
                                             f"from the exported {tensors[layer + '.alpha']}")
    return desc, net


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--data", default="data", help="data root (holds mnist/ or fashion-mnist/)")
    ap.add_argument("--masked", action="store_true",
                    help="rebuild the masked net (trainable scores, g applied in each forward)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import sm_torch

    desc, net = build(a.model, masked=a.masked)
    x, y = sm_torch.load_idx(os.path.join(a.data, desc["dataset"]), "test")
    with torch.no_grad():
        pred = torch.cat([net(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    acc = (pred == y).double().mean().item()
    out = {"test_acc": acc, "n": len(y), "predictions": pred.tolist()}
    if a.masked:
        # One backward pass: the straight-through gradient reaches every layer's scores.
        F.cross_entropy(net(x[:128]), y[:128]).backward()
        grads = {n.replace("__", "."): p.grad for n, p in net.named_parameters()}
        out["scores_with_gradient"] = sorted(n for n, gr in grads.items()
                                             if gr is not None and gr.abs().sum() > 0)
        out["scores"] = sorted(grads)
    if a.json:
        print(json.dumps(out))
    else:
        kind = "masked net" if a.masked else "effective weights"
        print(f"{a.model} ({kind}): {desc['dataset']} test accuracy {acc:.4f} over {len(y)} images")


if __name__ == "__main__":
    main()
