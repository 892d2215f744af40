#!/usr/bin/env python3
"""PyTorch reference for one training step of the Conv nets and ResNets at batch 128, compared
with the Rust implementation in the same run (benches/benches/conv_step.rs).

The models, masks, thresholds, losses and optimizer are those of sm_torch.py (its docstring
says exactly what each computes), with the recipe of the corrected presets (configs/paper/,
REPRODUCTION-NOTES "Corrections"):
  signed (default): W * g(M), W signed constant gain * sqrt(2 / fan_in) with --gain
      (sqrt(1.5) for Conv and ResNet ELUS), M Xavier uniform, per-layer threshold
      tau = --fraction * max|M_init| (Conv 0.4, ResNet20 0.75), straight-through estimator;
  --dense: trainable He-uniform W, no mask;
  loss --loss (clipped: Keras' cross-entropy on clipped probabilities; logits);
  SGDW (Nesterov 0.9, decoupled decay --wd applied before the step) at --lr.
Data: one batch of N(0,1) inputs [--batch, 3, 32, 32] with labels uniform in 0..9 and a
learnable class signal as on the Rust side (benches/src/lib.rs: synthetic_learnable): a sample
of class k gets +2 on rows [k*32/10, (k+1)*32/10) of channel k % 3. Not timed; the same batch
every step. Denormal floats are flushed to zero (torch.set_flush_denormal), as
on the Rust side, so a net whose activations decay cannot look slow or fast for that reason.

Prints one JSON line: {"framework": "pytorch", "model", "step_seconds" (mean of --steps steps
after --warmup), "losses" (every step's loss, warm-up included), ...}. The caller refuses a
ratio when a loss is non-finite or exploding.
"""
import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sm_torch  # noqa: E402
import torch  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["conv2", "conv4", "conv6", "conv8", "resnet20"],
                    default="conv2")
    ap.add_argument("--dense", action="store_true")
    ap.add_argument("--bn", choices=["none", "learnable"], default="none")
    ap.add_argument("--stem-bn", choices=["none", "learnable"], default="learnable")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--fraction", type=float, default=0.4)
    ap.add_argument("--gain", type=float, default=math.sqrt(1.5))
    ap.add_argument("--loss", choices=sorted(sm_torch.LOSSES), default="clipped")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--wd", type=float, default=5e-4)
    args = ap.parse_args()
    sm_torch.configure(args.threads)
    gen = torch.Generator().manual_seed(0)
    model = sm_torch.build_model(args.model, (3, 32, 32), 10, gen, args.gain, args.dense,
                                 bn=args.bn, stem_bn=args.stem_bn)
    masked = sm_torch.masked_layers(model)
    if masked:
        sm_torch.set_max_fraction(masked, args.fraction)
    model.train()
    loss_fn = sm_torch.LOSSES[args.loss]
    opt = sm_torch.SGDW(model.parameters(), args.lr)
    x = torch.randn(args.batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    for i, k in enumerate(y.tolist()):
        x[i, k % 3, k * 32 // 10:(k + 1) * 32 // 10, :] += 2.0
    times, losses = [], []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step(args.lr, args.wd)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    print(json.dumps({"framework": "pytorch", "torch_version": torch.__version__,
                      "model": args.model, "dense": args.dense, "threads": args.threads,
                      "batch": args.batch, "step_seconds": sum(times) / len(times),
                      "losses": [v if math.isfinite(v) else None for v in losses]}))
    print(f"steps: {times}", file=sys.stderr)


if __name__ == "__main__":
    main()
