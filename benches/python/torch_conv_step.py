#!/usr/bin/env python3
"""PyTorch reference for one training step of the CIFAR nets at batch 128, compared with the
Rust implementation in the same run (benches/benches/conv_step.rs).

Models (same layers, shapes and activations as supermask's `models` crate):
  conv2/conv4 (Table 7): 3x3 "same" convs without bias (64,64,pool[,128,128,pool]),
      FC 256-256-10, ELU after every layer but the last.
  resnet20 (the authors' ResNet, REPRODUCTION-NOTES / models/src/resnet.rs): stem 3x3 conv 16
      -> BN -> ELU -> 3x3 max-pool stride 1 same; 3 stages of 3 blocks (16/32/64 filters);
      first block of a stage: 1x1 conv (stride 1, then 2) -> BN -> ELU -> 3x3 conv -> BN -> ELU,
      shortcut 1x1 conv -> BN, out ELU(main + shortcut); other blocks 3x3 conv -> BN -> ELU ->
      3x3 conv -> BN, out ELU(x + input); global average pool -> FC 64-10.
      BN "none" is the authors' frozen BN (a constant scale 1/sqrt(1 + 1e-3)); "learnable" is
      batch statistics with eps 1e-3 and a trainable scale and shift.
Signed (default): every layer W * g(M), W signed constant (magnitude gain*sqrt(2/fan_in)), M
  Xavier uniform, g(M) = -1 if M <= -tau, +1 if M >= tau else 0, straight-through estimator;
  tau is chosen once so that --prune-rate of all scores start at 0 (supermask's `initial-rate`
  threshold, the presets' Table 11 rates), or is 0.01 with --prune-rate 0.
--dense: trainable W, no mask.
Cross entropy; SGD Nesterov 0.9 with decoupled weight decay (p -= wd * p, then the SGD step).
Data N(0,1), not timed. Prints one JSON line: {"framework": "pytorch", "model": ...,
"step_seconds": mean of --steps steps after --warmup steps, ...}.
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

TAU = 0.01
EPS = 1e-3


def fans(shape):
    receptive = 1
    for d in shape[2:]:
        receptive *= d
    return shape[1] * receptive, shape[0] * receptive


class Masked(torch.nn.Module):
    """A signed-Supermask weight, or a dense trainable weight with `dense`."""

    def __init__(self, shape, gen, gain, dense):
        super().__init__()
        fi, fo = fans(shape)
        self.dense = dense
        self.tau = TAU
        if dense:
            b = math.sqrt(6.0 / fi)
            self.m = torch.nn.Parameter(torch.empty(shape).uniform_(-b, b, generator=gen))
        else:
            sign = torch.randint(0, 2, shape, generator=gen).float() * 2 - 1
            self.register_buffer("w", sign * gain * math.sqrt(2.0 / fi))
            b = math.sqrt(6.0 / (fi + fo))
            self.m = torch.nn.Parameter(torch.empty(shape).uniform_(-b, b, generator=gen))

    def weight(self):
        if self.dense:
            return self.m
        with torch.no_grad():
            g = (self.m >= self.tau).float() - (self.m <= -self.tau).float()
        return self.w * (g + self.m - self.m.detach())


class ConvNet(torch.nn.Module):
    def __init__(self, stages, gen, dense):
        super().__init__()
        gain = math.sqrt(3.0)
        self.convs = torch.nn.ModuleList()
        c = 3
        for s in range(stages):
            f = 64 << s
            self.convs.append(Masked((f, c, 3, 3), gen, gain, dense))
            self.convs.append(Masked((f, f, 3, 3), gen, gain, dense))
            c = f
        side = 32 >> stages
        widths = [c * side * side, 256, 256, 10]
        self.fcs = torch.nn.ModuleList(
            Masked((o, i), gen, gain, dense) for i, o in zip(widths[:-1], widths[1:]))

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


class BN(torch.nn.Module):
    def __init__(self, c, mode):
        super().__init__()
        self.mode = mode
        if mode == "learnable":
            self.bn = torch.nn.BatchNorm2d(c, eps=EPS, momentum=0.01)

    def forward(self, x):
        if self.mode == "none":
            return x * (1.0 / math.sqrt(1.0 + EPS))
        return self.bn(x)


class Block(torch.nn.Module):
    def __init__(self, c_in, f, stride, projection, gen, gain, dense, bn):
        super().__init__()
        k = 1 if projection else 3
        self.stride, self.pad1 = stride, (0 if projection else 1)
        self.conv1 = Masked((f, c_in, k, k), gen, gain, dense)
        self.bn1 = BN(f, bn)
        self.conv2 = Masked((f, f, 3, 3), gen, gain, dense)
        self.bn2 = BN(f, bn)
        self.projection = projection
        if projection:
            self.sc = Masked((f, c_in, 1, 1), gen, gain, dense)
            self.sc_bn = BN(f, bn)

    def forward(self, x):
        h = F.elu(self.bn1(F.conv2d(x, self.conv1.weight(), stride=self.stride,
                                    padding=self.pad1)))
        h = self.bn2(F.conv2d(h, self.conv2.weight(), padding=1))
        if self.projection:
            s = self.sc_bn(F.conv2d(x, self.sc.weight(), stride=self.stride))
            return F.elu(F.elu(h) + s)
        return F.elu(h + x)


class ResNet20(torch.nn.Module):
    def __init__(self, gen, dense, bn, stem_bn):
        super().__init__()
        gain = math.sqrt(1.5)
        w = 16
        self.stem = Masked((w, 3, 3, 3), gen, gain, dense)
        self.stem_bn = BN(w, stem_bn)
        blocks, c = [], w
        for stage in range(3):
            f = w << stage
            for b in range(3):
                blocks.append(Block(c, f, 1 if stage == 0 or b > 0 else 2, b == 0, gen, gain,
                                    dense, bn))
                c = f
        self.blocks = torch.nn.ModuleList(blocks)
        self.head = Masked((10, c), gen, gain, dense)

    def forward(self, x):
        x = F.elu(self.stem_bn(F.conv2d(x, self.stem.weight(), padding=1)))
        x = F.max_pool2d(x, 3, stride=1, padding=1)
        for b in self.blocks:
            x = b(x)
        return F.linear(x.mean(dim=(2, 3)), self.head.weight())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["conv2", "conv4", "resnet20"], default="conv2")
    ap.add_argument("--dense", action="store_true")
    ap.add_argument("--bn", choices=["none", "learnable"], default="none")
    ap.add_argument("--stem-bn", choices=["none", "learnable"], default="learnable")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--prune-rate", type=float, default=0.0)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--wd", type=float, default=5e-4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    if args.model == "resnet20":
        model = ResNet20(gen, args.dense, args.bn, args.stem_bn)
    else:
        model = ConvNet({"conv2": 1, "conv4": 2}[args.model], gen, args.dense)
    model.train()
    masked = [m for m in model.modules() if isinstance(m, Masked) and not m.dense]
    if masked and args.prune_rate > 0:
        scores = torch.cat([m.m.detach().abs().flatten() for m in masked])
        k = min(int(round(args.prune_rate * scores.numel())), scores.numel() - 1)
        tau = float(scores.sort().values[k])
        for m in masked:
            m.tau = tau
    params = [p for p in model.parameters()]
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, nesterov=True)
    x = torch.randn(args.batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            torch._foreach_mul_(params, 1 - args.wd)
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    final = float(loss.detach())
    print(json.dumps({"framework": "pytorch", "torch_version": torch.__version__,
                      "model": args.model, "dense": args.dense, "threads": args.threads,
                      "batch": args.batch, "step_seconds": sum(times) / len(times),
                      "loss": final if math.isfinite(final) else None}))
    print(f"steps: {times}", file=sys.stderr)


if __name__ == "__main__":
    main()
