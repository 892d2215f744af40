#!/usr/bin/env python3
"""PyTorch reference for one training step of a signed-Supermask Conv2/Conv4 (Table 7) at
batch 128 on CIFAR-shaped input, compared with the Rust implementation in the same run.

Workload: 3x3 "same" convs without bias (64,64,pool[,128,128,pool]), FC 256-256-10, ELU;
every layer W * g(M) with W signed constant sqrt(3)*sqrt(2/fan_in), M Xavier uniform,
g(M) = -1 if M <= -0.01, +1 if M >= 0.01 else 0, straight-through estimator; cross entropy;
SGD Nesterov 0.9, lr 0.05, decoupled weight decay 5e-4. Data N(0,1), not timed.
Prints one JSON line: {"framework": "pytorch", "model": ..., "step_seconds": mean of --steps
steps after --warmup steps, ...}.
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

TAU = 0.01


def fans(shape):
    receptive = 1
    for d in shape[2:]:
        receptive *= d
    return shape[1] * receptive, shape[0] * receptive


class Masked(torch.nn.Module):
    def __init__(self, shape, gen):
        super().__init__()
        fi, fo = fans(shape)
        sign = torch.randint(0, 2, shape, generator=gen).float() * 2 - 1
        self.register_buffer("w", sign * math.sqrt(3.0) * math.sqrt(2.0 / fi))
        b = math.sqrt(6.0 / (fi + fo))
        self.m = torch.nn.Parameter(torch.empty(shape).uniform_(-b, b, generator=gen))

    def weight(self):
        with torch.no_grad():
            g = (self.m >= TAU).float() - (self.m <= -TAU).float()
        return self.w * (g + self.m - self.m.detach())


class ConvNet(torch.nn.Module):
    def __init__(self, stages, gen):
        super().__init__()
        self.convs = torch.nn.ModuleList()
        c = 3
        for s in range(stages):
            f = 64 << s
            self.convs.append(Masked((f, c, 3, 3), gen))
            self.convs.append(Masked((f, f, 3, 3), gen))
            c = f
        side = 32 >> stages
        widths = [c * side * side, 256, 256, 10]
        self.fcs = torch.nn.ModuleList(Masked((o, i), gen) for i, o in zip(widths[:-1], widths[1:]))

    def forward(self, x):
        for i in range(0, len(self.convs), 2):
            x = F.elu(F.conv2d(x, self.convs[i].weight(), padding=1))
            x = F.elu(F.conv2d(x, self.convs[i + 1].weight(), padding=1))
            x = F.max_pool2d(x, 2)
        x = x.flatten(1)
        for j, fc in enumerate(self.fcs):
            x = F.linear(x, fc.weight())
            if j < len(self.fcs) - 1:
                x = F.elu(x)
        return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["conv2", "conv4"], default="conv2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    model = ConvNet({"conv2": 1, "conv4": 2}[args.model], gen)
    params = [p for p in model.parameters()]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True)
    x = torch.randn(args.batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            torch._foreach_mul_(params, 1 - 5e-4)
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    print(json.dumps({"framework": "pytorch", "torch_version": torch.__version__,
                      "model": args.model, "threads": args.threads, "batch": args.batch,
                      "step_seconds": sum(times) / len(times), "loss": float(loss)}))
    print(f"steps: {times}", file=sys.stderr)


if __name__ == "__main__":
    main()
