#!/usr/bin/env python3
"""PyTorch reference for one training epoch of a signed-Supermask FCN (784-300-100-10).

Compared against the Rust implementation in the same run. Emits exactly one JSON line
on stdout; everything else goes to stderr.

Workload (signed Supermask, default):
  * data: N synthetic samples of 784 float32 ~ N(0,1) (seeded), labels uniform in 0..9,
    batch 128 (last partial batch included), per-epoch shuffle with a fixed seed.
    Data generation is not timed.
  * model: 784-300-100-10, no biases, ELU(alpha=1) after the hidden layers, logits out.
    Each layer: frozen signed-constant W (sign random, |W| = sqrt(3)*sqrt(2/fan_in)) and a
    trainable score M (Xavier uniform, bound sqrt(6/(fan_in+fan_out))).
    Effective weight W * g(M), g(M) = -1 if M <= -0.01, +1 if M >= 0.01, else 0,
    straight-through estimator: mask = g(M).detach() + M - M.detach().
  * loss: cross entropy (batch mean).
  * optimizer: SGDW, Nesterov momentum 0.9, lr 0.05, decoupled weight decay 5e-4 applied
    as M -= wd * M each step (not multiplied by lr), before the SGD step.

--dense: trainable W (uniform, variance 1.5/fan_in), no mask, lr 0.008, wd 7e-4.

Note: with --threads > 1, OpenMP barriers make PyTorch extremely sensitive to CPU
oversubscription (e.g. a concurrent cargo build): epochs can become 10x slower. The
per-epoch 1-minute load average is logged to stderr; only trust quiet-machine numbers.

Usage:
  python3 torch_fcn_epoch.py [--threads 2] [--epochs 2] [--samples 60000] [--batch 128]
                             [--dense] [--seed 0]
"""

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

SIZES = [784, 300, 100, 10]
THRESHOLD = 0.01


def log(*args):
    print(*args, file=sys.stderr, flush=True)


class SignedSupermaskFCN(torch.nn.Module):
    def __init__(self, gen):
        super().__init__()
        self.weights = []
        self.scores = torch.nn.ParameterList()
        for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:]):
            mag = math.sqrt(3.0) * math.sqrt(2.0 / fan_in)
            sign = torch.randint(0, 2, (fan_out, fan_in), generator=gen).float() * 2.0 - 1.0
            w = (sign * mag).requires_grad_(False)
            self.weights.append(w)
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            m = torch.empty(fan_out, fan_in).uniform_(-bound, bound, generator=gen)
            self.scores.append(torch.nn.Parameter(m))

    def forward(self, x):
        n = len(self.weights)
        for i, (w, m) in enumerate(zip(self.weights, self.scores)):
            with torch.no_grad():
                g = (m >= THRESHOLD).float() - (m <= -THRESHOLD).float()
            # straight-through estimator: forward value g, gradient of identity w.r.t. m
            mask = g + m - m.detach()
            x = F.linear(x, w * mask)
            if i < n - 1:
                x = F.elu(x, alpha=1.0)
        return x


class DenseFCN(torch.nn.Module):
    def __init__(self, gen):
        super().__init__()
        self.weights = torch.nn.ParameterList()
        for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:]):
            # uniform(-b, b) has variance b^2/3 = 1.5/fan_in  =>  b = sqrt(4.5/fan_in)
            bound = math.sqrt(4.5 / fan_in)
            w = torch.empty(fan_out, fan_in).uniform_(-bound, bound, generator=gen)
            self.weights.append(torch.nn.Parameter(w))

    def forward(self, x):
        n = len(self.weights)
        for i, w in enumerate(self.weights):
            x = F.linear(x, w)
            if i < n - 1:
                x = F.elu(x, alpha=1.0)
        return x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2, help="epochs to run; the last one is reported")
    ap.add_argument("--samples", type=int, default=60000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dense", action="store_true", help="dense baseline instead of signed Supermask")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.epochs < 1 or args.samples < 1 or args.batch < 1 or args.threads < 1:
        ap.error("--epochs, --samples, --batch and --threads must be >= 1")

    torch.set_num_threads(args.threads)
    # Denormals flushed to zero, as on the Rust side (benches/src/lib.rs: set_threads).
    torch.set_flush_denormal(True)
    # single-process benchmark: keep inter-op pool from adding threads
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass

    gen = torch.Generator().manual_seed(args.seed)
    # Data generation (not timed).
    xs = torch.randn(args.samples, SIZES[0], generator=gen, dtype=torch.float32)
    ys = torch.randint(0, SIZES[-1], (args.samples,), generator=gen, dtype=torch.int64)

    if args.dense:
        model = DenseFCN(gen)
        params = list(model.weights)
        lr, wd = 0.008, 7e-4
        workload = "fcn-dense-epoch"
    else:
        model = SignedSupermaskFCN(gen)
        params = list(model.scores)
        lr, wd = 0.05, 5e-4
        workload = "fcn-signed-epoch"

    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
    shuffle_gen = torch.Generator().manual_seed(args.seed + 1)
    steps = math.ceil(args.samples / args.batch)
    log(f"torch {torch.__version__}, threads={torch.get_num_threads()}, workload={workload}, "
        f"samples={args.samples}, batch={args.batch}, steps/epoch={steps}")

    epoch_seconds = None
    final_loss = None
    epoch_losses = []
    for epoch in range(args.epochs):
        # Shuffle order is fixed by seed; permutation is computed before the timer starts.
        perm = torch.randperm(args.samples, generator=shuffle_gen)
        t0 = time.perf_counter()
        last = None
        loss_sum = torch.zeros(())
        for s in range(steps):
            idx = perm[s * args.batch:(s + 1) * args.batch]
            xb = xs.index_select(0, idx)
            yb = ys.index_select(0, idx)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                # decoupled weight decay, not scaled by lr: M <- M - wd * M
                torch._foreach_mul_(params, 1.0 - wd)
            opt.step()
            last = loss
            loss_sum += loss.detach() * yb.shape[0]
        final_loss = float(last.item())  # forces completion before stopping the clock
        epoch_seconds = time.perf_counter() - t0
        epoch_losses.append(float(loss_sum) / args.samples)
        log(f"epoch {epoch}: {epoch_seconds:.3f} s, last batch loss {final_loss:.4f}, "
            f"loadavg(1m) {os.getloadavg()[0]:.2f}")

    print(json.dumps({
        "framework": "pytorch",
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "workload": workload,
        "samples": args.samples,
        "batch": args.batch,
        "epoch_seconds": epoch_seconds,
        "final_loss": final_loss,
        "epoch_losses": epoch_losses,
    }))


if __name__ == "__main__":
    main()
