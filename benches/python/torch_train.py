#!/usr/bin/env python3
"""Independent PyTorch referee for training Conv nets and ResNets with the corrected recipe
(REPRODUCTION-NOTES, "Corrections"); its final numbers are compared with the Rust tool's.
Models, masks, thresholds, losses, data, augmentation, optimizer and schedules are defined
in sm_torch.py (see its docstring for the exact computations).

Training: MNIST-style IDX data from --data (images [1, 28, 28], per-image standardized), or
CIFAR-10 binary files where --data holds cifar-10-batches-bin (images [3, 32, 32]),
optionally a seeded random subset of --train-subset training images; every epoch a seeded
reshuffle, batches of --batch including the last partial one, model.train(); per step the
configured loss (clipped: Keras' clipped cross-entropy on probabilities, eps 1e-7; logits:
plain cross-entropy), SGDW with Nesterov momentum 0.9 and decoupled weight decay, lr/decay
from the schedule (staircase: both times 0.96^(step // --stair-steps); plateau: lr times
--plateau-factor after --plateau-patience epochs without the mean training loss improving by
more than 1e-4, decay not reduced; constant). --augment: pad 4, random crop, random flip.
Evaluation after every epoch in model.eval() on the full test split, batches of 1000.

Thresholds (masked models): max-fraction (per layer tau = --fraction * max|M_init|) or
global-rate (one tau with --rate of all scores |M| < tau), set once after init.

Random streams (torch generators derived from --seed): 0 model init, 1 training subset,
2 epoch shuffles, 3 augmentation.

stdout: one JSON line per epoch:
  {"epoch" (1-based), "train_loss" (mean per sample of the configured loss over the epoch's
   steps, each batch's loss weighted by its size), "train_acc", "test_loss", "test_acc"
   (fractions; argmax of the logits), "remaining" (sum over masked layers of the non-zero
   mask entries / all their entries, after the epoch; 1.0 for --dense), "layers"
   ({name: remaining}, {} for --dense), "lr" (the learning rate of the epoch's last step),
   "seconds" (wall time of the epoch's training and evaluation)}
stderr: configuration and progress. Exit 1 if a loss becomes non-finite.

--self-test: checks of the loss gradient (finite differences in float64, zero gradient on
saturated rows), the SGDW update against a hand-written Keras SGDW across lr changes, the
augmentation against a per-pixel loop, the thresholds and the plateau rule; exit 0 on success.
"""
import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sm_torch as sm  # noqa: E402


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def stream(seed, k):
    return torch.Generator().manual_seed((seed * 1_000_003 + k) % (2 ** 63))


# ---------------------------------------------------------------------------------------------
# Self-test


def self_test():
    torch.manual_seed(0)
    failures = []

    def check(cond, what):
        log(("ok    " if cond else "FAIL  ") + what)
        if not cond:
            failures.append(what)

    # 1. clipped cross-entropy: finite differences in float64, saturated rows.
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 10, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 10, (6,), generator=g)
    logits[4] = 0.0
    logits[4, y[4]] = 40.0   # p(label) ~ 1 - 9 e^-40 > 1 - 1e-7: clipped above
    logits[5] = 0.0
    logits[5, y[5]] = -40.0  # p(label) ~ e^-40 / 9 < 1e-7: clipped below
    x = logits.clone().requires_grad_(True)
    loss = sm.clipped_cross_entropy(x, y)
    (grad,) = torch.autograd.grad(loss, x)
    h = 1e-6
    fd = torch.zeros_like(logits)
    for i in range(logits.shape[0]):
        for j in range(logits.shape[1]):
            lp, lm = logits.clone(), logits.clone()
            lp[i, j] += h
            lm[i, j] -= h
            fd[i, j] = (sm.clipped_cross_entropy(lp, y) - sm.clipped_cross_entropy(lm, y)) / (2 * h)
    err = float((grad[:4] - fd[:4]).abs().max())
    check(err < 1e-7, f"clipped CE gradient = finite differences on unclipped rows (max err {err:.2e})")
    check(bool((grad[4:] == 0).all()), "clipped CE gradient exactly 0 on the saturated rows")
    check(bool((fd[4:] == 0).all()), "clipped CE finite differences 0 on the saturated rows")
    p = torch.softmax(logits, 1).gather(1, y.view(-1, 1)).squeeze(1)
    keras = -torch.log(p.clamp(1e-7, 1 - 1e-7)).mean()
    loss = float(loss.detach())
    check(abs(loss - float(keras)) < 1e-12,
          f"clipped CE = -mean log clip(softmax) ({loss:.12f} vs {float(keras):.12f})")
    plain = sm.cross_entropy_logits(logits[:4], y[:4])
    check(abs(float(sm.clipped_cross_entropy(logits[:4], y[:4])) - float(plain)) < 1e-12,
          "clipped CE = logits CE where nothing is clipped")

    # 2. SGDW = Keras SGDW (v <- m v - lr g; p <- p - wd p + m v - lr g) across lr changes.
    p0 = torch.randn(5, 7, generator=g, dtype=torch.float64)
    grads = [torch.randn(5, 7, generator=g, dtype=torch.float64) for _ in range(8)]
    lrs = [0.1, 0.1, 0.05, 0.05, 0.02, 0.1, 0.1, 0.004]
    wds = [1e-2, 1e-2, 5e-3, 5e-3, 5e-3, 1e-3, 0.0, 1e-3]
    param = torch.nn.Parameter(p0.clone())
    opt = sm.SGDW([param], lrs[0])
    ref, v = p0.clone(), torch.zeros_like(p0)
    for gr, lr, wd in zip(grads, lrs, wds):
        param.grad = gr.clone()
        opt.step(lr, wd)
        v = 0.9 * v - lr * gr
        ref = ref - wd * ref + 0.9 * v - lr * gr
    err = float((param.detach() - ref).abs().max())
    check(err < 1e-12, f"SGDW = Keras SGDW over lr/wd changes (max err {err:.2e})")

    # 3. augmentation against a per-pixel loop.
    xb = torch.randn(16, 3, 5, 6, generator=g)
    ga, gb = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    out = sm.augment_pad_crop_flip(xb, ga, pad=2)
    dy = torch.randint(0, 5, (16,), generator=gb)
    dx = torch.randint(0, 5, (16,), generator=gb)
    flip = torch.randint(0, 2, (16,), generator=gb)
    ref = torch.zeros_like(xb)
    for i in range(16):
        for r in range(5):
            for c in range(6):
                cc = 5 - c if flip[i] else c
                sr, sc = r + int(dy[i]) - 2, cc + int(dx[i]) - 2
                if 0 <= sr < 5 and 0 <= sc < 6:
                    ref[i, :, r, c] = xb[i, :, sr, sc]
    check(torch.equal(out, ref), "augmentation = pad, crop, then flip (per-pixel loop)")

    # 4. thresholds.
    gen = stream(0, 0)
    model = sm.build_model("conv2", (1, 28, 28), 10, gen, math.sqrt(1.5), False)
    layers = sm.masked_layers(model)
    sm.set_max_fraction(layers, 0.4)
    rem, per = sm.remaining(model)
    # uniform scores: ~60% kept per layer, up to 4 binomial standard deviations off
    check(all(abs(per[m.name] - 0.6) < 4 * math.sqrt(0.24 / m.m.numel()) + 1e-3 for m in layers),
          f"max-fraction 0.4 leaves ~60% per layer ({[round(r, 4) for r in per.values()]})")
    tau = sm.set_global_rate(layers, 0.193)
    rem, _ = sm.remaining(model)
    check(abs(rem - (1 - 0.193)) < 1e-5, f"global-rate 0.193: remaining {rem:.6f} (tau {tau:.3e})")

    # 5. plateau (Keras ReduceLROnPlateau, patience 2, factor 0.2).
    pl = sm.Plateau(0.2, 2)
    f = [pl.end_epoch(v) for v in [1.0, 0.9, 0.89995, 0.9, 0.5, 0.5, 0.5, 0.5, 0.5]]
    want = [1, 1, 1, 0.2, 0.2, 0.2, 0.04, 0.04, 0.008]
    check(all(abs(a - b) < 1e-12 for a, b in zip(f, want)), f"plateau factors {f}")

    if failures:
        log(f"{len(failures)} check(s) failed")
        return 1
    log("all self-tests passed")
    return 0


# ---------------------------------------------------------------------------------------------
# Training


def evaluate(model, loss_fn, x, y, batch=1000):
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            logits = model(x[i:i + batch])
            yb = y[i:i + batch]
            loss_sum += float(loss_fn(logits, yb)) * yb.shape[0]
            correct += int((logits.argmax(1) == yb).sum())
    return loss_sum / x.shape[0], correct / x.shape[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--model", choices=list(sm.CONV_STAGES) + list(sm.RESNET_BLOCKS),
                    default="conv4")
    ap.add_argument("--dense", action="store_true")
    ap.add_argument("--data", default="data/fashion-mnist")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--train-subset", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--wd", type=float, default=5e-4)
    ap.add_argument("--schedule", choices=["staircase", "plateau", "constant"],
                    default="staircase")
    ap.add_argument("--stair-steps", type=int, default=3900)
    ap.add_argument("--stair-rate", type=float, default=0.96)
    ap.add_argument("--bn-momentum", type=float, default=0.99,
                    help="running-average momentum, Keras' convention (supermask's "
                         "train.bn_momentum; PyTorch's momentum is 1 minus this)")
    ap.add_argument("--warmup-steps", type=int, default=0,
                    help="learning-rate warm-up steps (supermask's [warmup] steps)")
    ap.add_argument("--warmup-start", type=float, default=0.1)
    ap.add_argument("--warmup-shape", choices=["linear", "constant"], default="linear")
    ap.add_argument("--plateau-factor", type=float, default=0.2)
    ap.add_argument("--plateau-patience", type=int, default=15)
    ap.add_argument("--threshold", choices=["max-fraction", "global-rate"],
                    default="max-fraction")
    ap.add_argument("--fraction", type=float, default=0.4)
    ap.add_argument("--rate", type=float, default=0.193)
    ap.add_argument("--gain", type=float, default=math.sqrt(1.5))
    ap.add_argument("--loss", choices=list(sm.LOSSES), default="clipped")
    ap.add_argument("--augment", action="store_true")
    ap.add_argument("--bn", choices=["none", "learnable"], default="none")
    ap.add_argument("--stem-bn", choices=["none", "learnable"], default="learnable")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--width", type=float, default=1.0)
    args = ap.parse_args()

    if args.self_test:
        sm.configure(1)
        sys.exit(self_test())
    sm.configure(args.threads)

    x_train, y_train = sm.load_images(args.data, "train")
    x_test, y_test = sm.load_images(args.data, "test")
    if args.train_subset is not None:
        if not 0 < args.train_subset <= x_train.shape[0]:
            sys.exit(f"--train-subset must be in 1..{x_train.shape[0]}")
        idx = torch.randperm(x_train.shape[0], generator=stream(args.seed, 1))
        idx = idx[:args.train_subset].sort().values
        x_train, y_train = x_train[idx], y_train[idx]
    classes = int(max(y_train.max(), y_test.max())) + 1
    in_shape = tuple(x_train.shape[1:])

    model = sm.build_model(args.model, in_shape, classes, stream(args.seed, 0), args.gain,
                           args.dense, args.bn, args.stem_bn, args.width)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0 - args.bn_momentum  # supermask's (Keras') convention
    layers = sm.masked_layers(model)
    if layers:
        if args.threshold == "max-fraction":
            sm.set_max_fraction(layers, args.fraction)
        else:
            sm.set_global_rate(layers, args.rate)
    rem0, _ = sm.remaining(model)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"torch {torch.__version__}, {args.threads} thread(s); {vars(args)}")
    log(f"data {args.data}: train {tuple(x_train.shape)}, test {tuple(x_test.shape)}, "
        f"{classes} classes; {args.model} {'dense' if args.dense else 'signed'}, "
        f"{n_params} trainable values, remaining at init {rem0:.4f}")

    loss_fn = sm.LOSSES[args.loss]
    opt = sm.SGDW(model.parameters(), args.lr)
    plateau = sm.Plateau(args.plateau_factor, args.plateau_patience)
    shuffle_gen, aug_gen = stream(args.seed, 2), stream(args.seed, 3)
    n = x_train.shape[0]
    step = 0
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=shuffle_gen)
        loss_sum, correct = 0.0, 0
        for b, i in enumerate(range(0, n, args.batch)):
            idx = order[i:i + args.batch]
            xb, yb = x_train[idx], y_train[idx]
            if args.augment:
                xb = sm.augment_pad_crop_flip(xb, aug_gen)
            if args.schedule == "staircase":
                f = sm.staircase_factor(step, args.stair_steps, args.stair_rate)
                lr, wd = args.lr * f, args.wd * f
            elif args.schedule == "plateau":
                lr, wd = args.lr * plateau.lr_factor, args.wd
            else:
                lr, wd = args.lr, args.wd
            lr *= sm.warmup_factor(step, args.warmup_steps, args.warmup_start,
                                   args.warmup_shape)
            logits = model(xb)
            loss = loss_fn(logits, yb)
            lv = float(loss.detach())
            if not math.isfinite(lv):
                log(f"error: the training loss became {lv} at epoch {epoch + 1} step {step + 1}")
                sys.exit(1)
            opt.zero_grad()
            loss.backward()
            opt.step(lr, wd)
            step += 1
            loss_sum += lv * yb.shape[0]
            correct += int((logits.detach().argmax(1) == yb).sum())
            if (b + 1) % 50 == 0:
                log(f"epoch {epoch + 1} batch {b + 1}: loss {lv:.4f}")
        train_loss, train_acc = loss_sum / n, correct / n
        if args.schedule == "plateau":
            plateau.end_epoch(train_loss)
        test_loss, test_acc = evaluate(model, loss_fn, x_test, y_test)
        if not math.isfinite(test_loss):
            log(f"error: the test loss became {test_loss} after epoch {epoch + 1}")
            sys.exit(1)
        rem, per = sm.remaining(model)
        print(json.dumps({"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                          "test_loss": test_loss, "test_acc": test_acc, "remaining": rem,
                          "layers": per, "lr": lr,
                          "seconds": time.perf_counter() - t0}), flush=True)


if __name__ == "__main__":
    main()
