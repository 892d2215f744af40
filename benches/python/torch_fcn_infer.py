#!/usr/bin/env python3
"""PyTorch reference for dense inference, the baseline the exported signed Supermasks are
compared with (benches/benches/infer.rs):

- the FCN 784-300-100-10 (ELU, no biases) at batch 1 and batch 256 (--part fcn);
- the Conv2 (3x3 convs 64, 64, 2x2 max-pool, FC 16384-256-256-10, ELU, no biases) at
  --conv-batch;
- the authors' ResNet20 (REPRODUCTION-NOTES; supermask_models::resnet: stem 3x3 conv -> BN ->
  ELU -> 3x3 stride-1 max-pool, projection first blocks with 1x1 convs, global average pool,
  linear head; BN in evaluation mode) at --conv-batch (these two: --part conv).

Each is timed under torch.inference_mode() (inputs N(0,1), not timed), median of the calls
after warm-up. Prints one JSON line: {"framework": "pytorch", "batch1_seconds": ...,
"batch256_seconds": ..., "conv2_seconds": ..., "resnet20_seconds": ...}.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def median_seconds(f, reps, warmup=20):
    for _ in range(warmup):
        f()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Block(nn.Module):
    def __init__(self, c_in, c_out, projection, stride):
        super().__init__()
        k, pad = (1, 0) if projection else (3, 1)
        self.conv1 = nn.Conv2d(c_in, c_out, k, stride, pad, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out, eps=1e-3)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, eps=1e-3)
        self.shortcut = None
        if projection:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False), nn.BatchNorm2d(c_out, eps=1e-3)
            )

    def forward(self, x):
        h = self.bn2(self.conv2(F.elu(self.bn1(self.conv1(x)))))
        if self.shortcut is not None:
            return F.elu(F.elu(h) + self.shortcut(x))
        return F.elu(h + x)


class ResNet20(nn.Module):
    def __init__(self, w=16, classes=10, per_stage=3):
        super().__init__()
        self.stem = nn.Conv2d(3, w, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(w, eps=1e-3)
        blocks, c = [], w
        for stage in range(3):
            filters = w << stage
            for b in range(per_stage):
                stride = 2 if (b == 0 and stage > 0) else 1
                blocks.append(Block(c, filters, b == 0, stride))
                c = filters
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, classes, bias=False)

    def forward(self, x):
        x = F.max_pool2d(F.elu(self.stem_bn(self.stem(x))), 3, 1, 1)
        x = self.blocks(x)
        return self.head(x.mean(dim=(2, 3)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--conv-batch", type=int, default=32)
    ap.add_argument("--conv-reps", type=int, default=10)
    ap.add_argument("--part", choices=["all", "fcn", "conv"], default="all",
                    help="time only the FCN, or only the Conv2 and ResNet20")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # Denormals flushed to zero, as on the Rust side (benches/src/lib.rs: set_threads).
    torch.set_flush_denormal(True)
    gen = torch.Generator().manual_seed(0)
    sizes = [784, 300, 100, 10]
    ws = [torch.randn(o, i, generator=gen) * (2.0 / i) ** 0.5 for i, o in zip(sizes[:-1], sizes[1:])]

    def model(x):
        for j, w in enumerate(ws):
            x = F.linear(x, w)
            if j < len(ws) - 1:
                x = F.elu(x)
        return x

    c1 = torch.randn(64, 3, 3, 3, generator=gen) * (2.0 / 27) ** 0.5
    c2 = torch.randn(64, 64, 3, 3, generator=gen) * (2.0 / 576) ** 0.5
    fcs = [torch.randn(o, i, generator=gen) * (2.0 / i) ** 0.5 for i, o in [(16384, 256), (256, 256), (256, 10)]]

    def conv2(x):
        x = F.elu(F.conv2d(x, c1, padding=1))
        x = F.max_pool2d(F.elu(F.conv2d(x, c2, padding=1)), 2).flatten(1)
        for j, w in enumerate(fcs):
            x = F.linear(x, w)
            if j < len(fcs) - 1:
                x = F.elu(x)
        return x

    resnet = ResNet20().eval()

    out = {"framework": "pytorch", "torch_version": torch.__version__, "threads": args.threads}
    with torch.inference_mode():
        if args.part in ("all", "fcn"):
            for batch in (1, 256):
                x = torch.randn(batch, 784, generator=gen)
                out[f"batch{batch}_seconds"] = median_seconds(lambda: model(x), args.reps)
        if args.part == "fcn":
            print(json.dumps(out))
            return
        x = torch.randn(args.conv_batch, 3, 32, 32, generator=gen)
        out["conv_batch"] = args.conv_batch
        out["conv2_seconds"] = median_seconds(lambda: conv2(x), args.conv_reps, 3)
        out["resnet20_seconds"] = median_seconds(lambda: resnet(x), args.conv_reps, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
