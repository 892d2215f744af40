#!/usr/bin/env python3
"""Edge-popup on the paper's FCN in PyTorch: the referee for supermask's `edge-popup` preset.

    python3 benches/python/edge_popup_fcn.py --data data [--epochs 100] [--seed 0] [--threads 1]

An implementation independent of the Rust code, written from allenai/hidden-networks
(utils/conv_type.py GetSubnet and SubnetConv, utils/builder.py signed_constant,
utils/schedulers.py cosine_lr, main.py's optimizer) for the recipe of
configs/methods/edge-popup-fcn-mnist.toml:
  FCN 784-300-100-10, no biases, ELU (alpha 1) between layers (the paper's FCN);
  weights frozen signed Kaiming constants sign(W0) * sqrt(2 / fan_in), W0 PyTorch's default
  init (so each sign is +-1 with probability 1/2); scores kaiming_uniform_(a = sqrt(5));
  each layer keeps its top k = 0.5 of |scores| (GetSubnet: j = int((1 - k) n) smallest pruned),
  identity backward, so the score gradient passes through |scores|;
  SGD lr 0.1, momentum 0.9, weight decay 1e-4 on the scores, no Nesterov; lr set at each
  epoch's start to 0.5 (1 + cos(pi e / E)) * 0.1; batch 128, reshuffled every epoch;
  MNIST with per-image standardization (sm_torch.load_idx), as supermask reads it.
Prints each epoch's training loss and test accuracy, then one JSON line.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sm_torch  # noqa: E402


class GetSubnet(torch.autograd.Function):
    """hidden-networks' GetSubnet: keep all but the int((1 - k) n) smallest scores."""

    @staticmethod
    def forward(ctx, scores, k):
        out = scores.clone()
        _, idx = scores.flatten().sort()
        j = int((1 - k) * scores.numel())
        flat_out = out.flatten()
        flat_out[idx[:j]] = 0
        flat_out[idx[j:]] = 1
        return out

    @staticmethod
    def backward(ctx, g):
        return g, None


class SubnetLinear(torch.nn.Linear):
    def __init__(self, fan_in, fan_out, k):
        super().__init__(fan_in, fan_out, bias=False)
        self.k = k
        self.scores = torch.nn.Parameter(torch.empty(self.weight.size()))
        torch.nn.init.kaiming_uniform_(self.scores, a=math.sqrt(5))
        std = torch.nn.init.calculate_gain("relu") / math.sqrt(fan_in)
        self.weight.data = self.weight.data.sign() * std
        self.weight.requires_grad = False

    def forward(self, x):
        subnet = GetSubnet.apply(self.scores.abs(), self.k)
        return F.linear(x, self.weight * subnet)


class FCN(torch.nn.Module):
    def __init__(self, k, widths=(784, 300, 100, 10)):
        super().__init__()
        self.layers = torch.nn.ModuleList(
            SubnetLinear(a, b, k) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x):
        x = x.flatten(1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i + 1 < len(self.layers):
                x = F.elu(x)
        return x


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(a.seed)
    xtr, ytr = sm_torch.load_idx(os.path.join(a.data, "mnist"), "train")
    xte, yte = sm_torch.load_idx(os.path.join(a.data, "mnist"), "test")
    net = FCN(a.keep)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=False)
    gen = torch.Generator().manual_seed(a.seed)
    for epoch in range(a.epochs):
        for group in opt.param_groups:
            group["lr"] = 0.5 * (1 + math.cos(math.pi * epoch / a.epochs)) * 0.1
        t0 = time.time()
        order = torch.randperm(len(xtr), generator=gen)
        total, n = 0.0, 0
        for i in range(0, len(order), 128):
            idx = order[i:i + 128]
            loss = F.cross_entropy(net(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            n += len(idx)
        train_loss = total / n
        if not math.isfinite(train_loss):
            sys.exit(f"epoch {epoch + 1}: training loss {train_loss}; refusing to go on")
        with torch.no_grad():
            logits = net(xte)
            acc = (logits.argmax(1) == yte).double().mean().item()
            test_loss = F.cross_entropy(logits, yte).item()
        print(f"epoch {epoch + 1} train loss {train_loss:.4f} test loss {test_loss:.4f} "
              f"acc {acc:.4f} {time.time() - t0:.1f}s", flush=True)
    print(json.dumps({"seed": a.seed, "epochs": a.epochs, "test_acc": acc,
                      "test_loss": test_loss, "train_loss": train_loss}))


if __name__ == "__main__":
    main()
