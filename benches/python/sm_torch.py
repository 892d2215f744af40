"""Shared PyTorch reference ("referee") for signed Supermasks (Koster et al., ICLR 2022).

An implementation independent of the Rust code of the *corrected* Conv/ResNet recipe
(../shared/paper/REPRODUCTION-NOTES.md, section "Corrections"). Everything is float32 on the
CPU, tensors channels-first (NCHW); the kernel layout is [c_out, c_in, k, k] and a linear
weight is [out, in].

Masked layers (`Masked`)
  Signed Supermask: a frozen signed-constant weight W = sign * gain * sqrt(2 / fan_in) (sign
  uniform in {-1, +1}), trainable scores M ~ U(-b, b), b = sqrt(6 / (fan_in + fan_out))
  (Xavier uniform), drawn in that order (signs, then scores) from the model's generator. Fans
  of a conv kernel are k*k*c_in and k*k*c_out, of a linear weight in and out. The mask is
      g(M) = +1 if M >= tau_p, -1 if M <= tau_n, else 0
  with per-layer thresholds (tau_n, tau_p), and the effective weight is W * g(M) in the
  forward pass with the straight-through estimator W * (g + M - M.detach()), so
  dL/dM = dL/d(W g) * W. (The authors compared strictly, M > tau; the two differ only for a
  score exactly on a threshold.)
  Dense (`dense=True`): a trainable weight drawn He-uniform, U(-sqrt(6/fan_in), +sqrt(6/fan_in)),
  and no mask.

Thresholds (set once after initialization, then fixed)
  set_max_fraction(layers, f): per layer tau = f * max|M_init| of that layer, symmetric
      (tau_n = -tau, tau_p = tau): the authors' rule (Conv2-8 f = 0.4, ResNet20 0.75).
  set_global_rate(layers, r): one symmetric tau for all layers, the k-th smallest |M| over
      all scores with k = min(round(r * n), n - 1), so that round(r * n) scores (distinct
      values) have |M| < tau and start at 0 (Table 11's "initial pruning rate").
  The default before either call is tau = 0.01 (the authors' fixed threshold).

Models (no biases anywhere; ELU with alpha 1)
  ConvNet(stages, in_shape, classes, ...): per stage s two 3x3 "same" convs with 64 << s
      filters, each followed by ELU, then a 2x2 max-pool stride 2 (floor); flatten (NCHW order)
      -> FC 256 -> ELU -> FC 256 -> ELU -> FC classes. conv2/4/6/8 have 1/2/3/4 stages; the
      flattened width follows the input (Conv4 on 1x28x28: 128*7*7 = 6272).
      Layer names conv1..conv{2*stages}, fc1..fc3.
  ResNet(blocks_per_stage, in_shape, classes, width_mult, ...): the authors' ResNet
      (REPRODUCTION-NOTES, "ResNets as the paper counted them"), w = round(16 * width_mult):
      stem 3x3 conv (c -> w, stride 1, pad 1) -> BN -> ELU -> 3x3 max-pool stride 1 pad 1;
      three stages of w, 2w, 4w filters with blocks_per_stage blocks each (ResNet20/56/110:
      3/9/18). The FIRST block of each stage is a projection block:
          h = ELU(BN(conv1x1(x, stride s))) ; h = ELU(BN(conv3x3(h)))
          out = ELU(h + BN(shortcut1x1(x, stride s)))      (s = 1 in stage 1, 2 after)
      the other blocks:
          h = ELU(BN(conv3x3(x))) ; out = ELU(BN(conv3x3(h)) + x)
      head: global average pool -> linear 4w -> classes. Names: stem.conv, s{i}.b{j}.conv1,
      s{i}.b{j}.conv2, s{i}.b{j}.shortcut, head.
  BN modes: "none" = the authors' frozen Keras BN, x / sqrt(1 + 1e-3); "learnable" =
      BatchNorm2d(eps 1e-3, momentum 0.01 = Keras' moving-average momentum 0.99), batch
      statistics in train(), moving statistics in eval(), trainable scale and shift.

Losses (mean over the batch)
  cross_entropy_logits: softmax cross-entropy on the logits.
  clipped_cross_entropy (the authors' Keras loss on softmax probabilities): the label's
      log-probability lp = log_softmax(logits)[label] is clipped to [log eps, log(1 - eps)]
      (eps 1e-7), and where it lies outside that range the gradient is zero (like TF's
      clip_by_value); loss = -mean(clipped lp), at most -log(1e-7) = 16.12 per sample.

Data
  load_idx(dir, split): {train,t10k}-{images-idx3,labels-idx1}-ubyte (raw or .gz); images
      float32 [n, 1, h, w], each standardized as TF's per_image_standardization on the raw
      0..255 pixel values: (x - mean) / max(std, 1/sqrt(N)), population std, N = pixels per
      image (computed in float64); labels int64.
  load_cifar10(dir, split): the CIFAR-10 binary files in dir/cifar-10-batches-bin, images
      float32 [n, 3, 32, 32], each image's 3072 values standardized the same way;
      load_images picks it where that folder exists, else load_idx.
  augment_pad_crop_flip: per image, pad 4 zero pixels on each side (after standardization),
      take a random h x w crop (offsets uniform in 0..8 each), then flip horizontally with
      probability 1/2; all channels share an image's crop and flip.

Optimizer (`SGDW`): Keras/TF-Addons SGDW, i.e. for each trainable parameter p with gradient g
  taken at p,
      v <- m v - lr_t g ;  p <- p - wd_t p + (m v - lr_t g)       (Nesterov, m = 0.9)
  implemented as p *= (1 - wd_t) followed by torch.optim.SGD(nesterov=True).step(). Torch
  keeps buf = -v / lr, so when lr_t changes the momentum buffers are rescaled by
  lr_old / lr_new, which keeps the update exactly the Keras one across lr changes.
  Decay applies to every trainable parameter that has a gradient (scores, dense weights,
  BN scale and shift).
Schedules
  staircase: lr_t = lr * rate^(step // steps), wd_t = wd * rate^(step // steps) (rate 0.96),
      step counted from 0 before the update.
  plateau (`Plateau`): Keras ReduceLROnPlateau on the epoch's mean training loss, min_delta
      1e-4, cooldown 0: an epoch improves if loss < best - min_delta (the first always does);
      after `patience` epochs without improvement lr *= factor and the count restarts. The
      weight decay is not reduced.
  constant: lr_t = lr, wd_t = wd.

Runtime: `configure(threads)` sets torch's thread count and flushes denormals to zero.
"""
import gzip
import math
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

BN_EPS = 1e-3
DEFAULT_TAU = 0.01


def configure(threads):
    """torch.set_num_threads(threads); denormal floats (< 1.2e-38) are flushed to zero (speed)."""
    torch.set_flush_denormal(True)
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Masked weights and thresholds


def fans(shape):
    """(fan_in, fan_out) of a weight [out, in, *kernel] (Keras' convention for conv kernels)."""
    receptive = 1
    for d in shape[2:]:
        receptive *= d
    return shape[1] * receptive, shape[0] * receptive


class Masked(torch.nn.Module):
    """A signed-Supermask weight W * g(M), or a dense trainable weight with `dense`."""

    def __init__(self, shape, gen, gain, dense, name=""):
        super().__init__()
        shape = tuple(shape)
        fi, fo = fans(shape)
        self.dense = dense
        self.name = name
        self.tau_n, self.tau_p = -DEFAULT_TAU, DEFAULT_TAU
        if dense:
            b = math.sqrt(6.0 / fi)
            self.m = torch.nn.Parameter(torch.empty(shape).uniform_(-b, b, generator=gen))
        else:
            sign = torch.randint(0, 2, shape, generator=gen).float() * 2 - 1
            self.register_buffer("w", sign * (gain * math.sqrt(2.0 / fi)))
            b = math.sqrt(6.0 / (fi + fo))
            self.m = torch.nn.Parameter(torch.empty(shape).uniform_(-b, b, generator=gen))

    def set_taus(self, tau_n, tau_p):
        if not tau_n < tau_p:
            raise ValueError(f"{self.name}: tau_n {tau_n} must be < tau_p {tau_p}")
        self.tau_n, self.tau_p = float(tau_n), float(tau_p)

    def mask(self):
        """The hard mask g(M) in {-1, 0, +1} (no gradient)."""
        with torch.no_grad():
            return (self.m >= self.tau_p).float() - (self.m <= self.tau_n).float()

    def weight(self):
        if self.dense:
            return self.m
        return self.w * (self.mask() + self.m - self.m.detach())

    def counts(self):
        """(non-zero mask entries, all entries); (n, n) for a dense weight."""
        if self.dense:
            return self.m.numel(), self.m.numel()
        return int((self.mask() != 0).sum()), self.m.numel()


def masked_layers(model):
    """The model's masked (non-dense) `Masked` layers, in construction order."""
    return [m for m in model.modules() if isinstance(m, Masked) and not m.dense]


def set_max_fraction(layers, fraction):
    """Per layer tau = fraction * max|M| (call right after init); symmetric thresholds."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"max-fraction: fraction must be in (0, 1), got {fraction}")
    for m in layers:
        tau = fraction * float(m.m.detach().abs().max())
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"{m.name}: max |M| gives threshold {tau}")
        m.set_taus(-tau, tau)


def set_global_rate(layers, rate):
    """One symmetric tau over all layers with round(rate * n) scores |M| < tau."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"global-rate: rate must be in [0, 1), got {rate}")
    scores = torch.cat([m.m.detach().abs().flatten() for m in layers])
    n = scores.numel()
    k = min(int(round(rate * n)), n - 1)
    tau = max(float(scores.sort().values[k]), float(torch.finfo(torch.float32).tiny))
    for m in layers:
        m.set_taus(-tau, tau)
    return tau


def remaining(model):
    """(overall share of non-zero mask entries over all masked layers, {name: share})."""
    layers = masked_layers(model)
    if not layers:
        return 1.0, {}
    kept = total = 0
    per = {}
    for m in layers:
        k, n = m.counts()
        kept += k
        total += n
        per[m.name] = k / n
    return kept / total, per


# ---------------------------------------------------------------------------------------------
# Models


class BN(torch.nn.Module):
    """"none": x / sqrt(1 + 1e-3) (frozen Keras BN); "learnable": BatchNorm2d eps 1e-3."""

    def __init__(self, c, mode):
        super().__init__()
        if mode not in ("none", "learnable"):
            raise ValueError(f"unknown BN mode {mode!r}")
        self.mode = mode
        if mode == "learnable":
            self.bn = torch.nn.BatchNorm2d(c, eps=BN_EPS, momentum=0.01)

    def forward(self, x):
        if self.mode == "none":
            return x * (1.0 / math.sqrt(1.0 + BN_EPS))
        return self.bn(x)


class ConvNet(torch.nn.Module):
    """Conv2/4/6/8 (Table 7) for inputs of any shape [c, h, w]."""

    def __init__(self, stages, in_shape, classes, gen, gain, dense):
        super().__init__()
        c, h, w = in_shape
        self.convs = torch.nn.ModuleList()
        for s in range(stages):
            f = 64 << s
            for _ in range(2):
                self.convs.append(Masked((f, c, 3, 3), gen, gain, dense,
                                         f"conv{len(self.convs) + 1}"))
                c = f
            if h < 2 or w < 2:
                raise ValueError(f"input {in_shape} is too small for {stages} stages")
            h, w = h // 2, w // 2
        widths = [c * h * w, 256, 256, classes]
        self.fcs = torch.nn.ModuleList(
            Masked((o, i), gen, gain, dense, f"fc{j + 1}")
            for j, (i, o) in enumerate(zip(widths[:-1], widths[1:])))

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


class Block(torch.nn.Module):
    """One block of the authors' ResNet (projection or identity, see the module docstring)."""

    def __init__(self, c_in, f, stride, projection, gen, gain, dense, bn, name):
        super().__init__()
        k = 1 if projection else 3
        self.stride, self.pad1 = stride, (0 if projection else 1)
        self.conv1 = Masked((f, c_in, k, k), gen, gain, dense, f"{name}.conv1")
        self.bn1 = BN(f, bn)
        self.conv2 = Masked((f, f, 3, 3), gen, gain, dense, f"{name}.conv2")
        self.bn2 = BN(f, bn)
        self.projection = projection
        if projection:
            self.sc = Masked((f, c_in, 1, 1), gen, gain, dense, f"{name}.shortcut")
            self.sc_bn = BN(f, bn)

    def forward(self, x):
        h = F.elu(self.bn1(F.conv2d(x, self.conv1.weight(), stride=self.stride,
                                    padding=self.pad1)))
        h = self.bn2(F.conv2d(h, self.conv2.weight(), padding=1))
        if self.projection:
            s = self.sc_bn(F.conv2d(x, self.sc.weight(), stride=self.stride))
            return F.elu(F.elu(h) + s)
        return F.elu(h + x)


class ResNet(torch.nn.Module):
    """The authors' ResNet20/56/110 (3/9/18 blocks per stage) for inputs [c, h, w]."""

    def __init__(self, blocks_per_stage, in_shape, classes, width_mult, gen, gain, dense,
                 bn="none", stem_bn="learnable"):
        super().__init__()
        w = int(round(16 * width_mult))
        if w <= 0 or blocks_per_stage <= 0:
            raise ValueError("resnet: width and blocks must be > 0")
        c = in_shape[0]
        self.stem = Masked((w, c, 3, 3), gen, gain, dense, "stem.conv")
        self.stem_bn = BN(w, stem_bn)
        blocks, c = [], w
        for stage in range(3):
            f = w << stage
            for b in range(blocks_per_stage):
                stride = 1 if stage == 0 or b > 0 else 2
                blocks.append(Block(c, f, stride, b == 0, gen, gain, dense, bn,
                                    f"s{stage + 1}.b{b + 1}"))
                c = f
        self.blocks = torch.nn.ModuleList(blocks)
        self.head = Masked((classes, c), gen, gain, dense, "head")

    def forward(self, x):
        x = F.elu(self.stem_bn(F.conv2d(x, self.stem.weight(), padding=1)))
        x = F.max_pool2d(x, 3, stride=1, padding=1)
        for b in self.blocks:
            x = b(x)
        return F.linear(x.mean(dim=(2, 3)), self.head.weight())


CONV_STAGES = {"conv2": 1, "conv4": 2, "conv6": 3, "conv8": 4}
RESNET_BLOCKS = {"resnet20": 3, "resnet56": 9, "resnet110": 18}


def build_model(name, in_shape, classes, gen, gain, dense, bn="none", stem_bn="learnable",
                width=1.0):
    """conv2/4/6/8 or resnet20/56/110 by name."""
    if name in CONV_STAGES:
        return ConvNet(CONV_STAGES[name], in_shape, classes, gen, gain, dense)
    if name in RESNET_BLOCKS:
        return ResNet(RESNET_BLOCKS[name], in_shape, classes, width, gen, gain, dense, bn,
                      stem_bn)
    raise ValueError(f"unknown model {name!r}")


# ---------------------------------------------------------------------------------------------
# Losses


def cross_entropy_logits(logits, y):
    """Mean softmax cross-entropy on the logits."""
    return F.cross_entropy(logits, y)


def clipped_cross_entropy(logits, y, eps=1e-7):
    """Keras' cross-entropy on softmax probabilities clipped to [eps, 1 - eps], mean over the
    batch; zero gradient for a sample whose label probability is clipped."""
    lp = F.log_softmax(logits, dim=1).gather(1, y.view(-1, 1)).squeeze(1)
    lo, hi = math.log(eps), math.log1p(-eps)
    inside = (lp >= lo) & (lp <= hi)
    picked = torch.where(inside, lp, lp.clamp(lo, hi).detach())
    return -picked.mean()


LOSSES = {"clipped": clipped_cross_entropy, "logits": cross_entropy_logits}


# ---------------------------------------------------------------------------------------------
# Data


def _open(path):
    if os.path.exists(path):
        return open(path, "rb")
    if os.path.exists(path + ".gz"):
        return gzip.open(path + ".gz", "rb")
    raise FileNotFoundError(f"{path} (or {path}.gz) not found")


def _read_idx(path):
    with _open(path) as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {body.size} bytes for dims {dims}")
    return body.reshape(dims)


def per_image_standardization(x):
    """TF's per_image_standardization of [n, ...] raw values (float64 statistics)."""
    x = np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1)
    n = x.shape[1]
    mean = x.mean(axis=1, keepdims=True)
    std = np.maximum(x.std(axis=1, keepdims=True), 1.0 / math.sqrt(n))
    return ((x - mean) / std).astype(np.float32)


def load_idx(directory, split):
    """(images float32 [n, 1, h, w] standardized per image, labels int64 [n]) of MNIST-style
    IDX files; split "train" or "test"/"t10k"."""
    prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}[split]
    images = _read_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte"))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{directory}: {images.shape[0]} images, {labels.shape[0]} labels")
    n, h, w = images.shape
    x = torch.from_numpy(per_image_standardization(images).reshape(n, 1, h, w))
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def load_cifar10(directory, split):
    """(images float32 [n, 3, 32, 32] standardized per image, labels int64 [n]) of the CIFAR-10
    binary files in `directory`/cifar-10-batches-bin (data_batch_1..5 or test_batch), each
    record a label byte and 3072 pixel bytes, as supermask's reader takes them."""
    root = os.path.join(directory, "cifar-10-batches-bin")
    names = ([f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train"
             else ["test_batch.bin"])
    recs = []
    for name in names:
        with open(os.path.join(root, name), "rb") as f:
            data = np.frombuffer(f.read(), dtype=np.uint8)
        if data.size % 3073:
            raise ValueError(f"{root}/{name}: {data.size} bytes is not whole 3073-byte records")
        recs.append(data.reshape(-1, 3073))
    recs = np.concatenate(recs)
    n = recs.shape[0]
    x = torch.from_numpy(per_image_standardization(recs[:, 1:]).reshape(n, 3, 32, 32))
    return x, torch.from_numpy(recs[:, 0].astype(np.int64))


def load_images(directory, split):
    """`load_cifar10` where `directory` holds cifar-10-batches-bin, else `load_idx`."""
    if os.path.isdir(os.path.join(directory, "cifar-10-batches-bin")):
        return load_cifar10(directory, split)
    return load_idx(directory, split)


def augment_pad_crop_flip(x, gen, pad=4):
    """A new batch [n, c, h, w]: per image zero-pad `pad`, random h x w crop, then a
    horizontal flip with probability 1/2, random numbers from the torch generator `gen`."""
    n, c, h, w = x.shape
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.randint(0, 2, (n,), generator=gen).bool()
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = dy[:, None] + torch.arange(h)[None, :]                    # [n, h]
    cols_src = torch.arange(w)[None, :].expand(n, w)
    cols_src = torch.where(flip[:, None], (w - 1) - cols_src, cols_src)
    cols = dx[:, None] + cols_src                                    # [n, w]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


# ---------------------------------------------------------------------------------------------
# Optimizer and schedules


class SGDW:
    """Keras SGDW (decoupled weight decay) on top of torch.optim.SGD; see the module docstring."""

    def __init__(self, params, lr, momentum=0.9, nesterov=True):
        self.params = [p for p in params if p.requires_grad]
        self.opt = torch.optim.SGD(self.params, lr=lr, momentum=momentum, nesterov=nesterov)
        self.lr = lr

    def zero_grad(self):
        self.opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self, lr, wd):
        if lr != self.lr:
            scale = self.lr / lr
            for p in self.params:
                buf = self.opt.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    buf.mul_(scale)
            for group in self.opt.param_groups:
                group["lr"] = lr
            self.lr = lr
        if wd:
            for p in self.params:
                if p.grad is not None:
                    p.mul_(1.0 - wd)
        self.opt.step()


def staircase_factor(step, steps, rate=0.96):
    return rate ** (step // steps)


def warmup_factor(step, steps, start=0.1, shape="linear"):
    """supermask's [warmup]: lr multiplier at 0-based step (1 from step `steps` on)."""
    if step >= steps:
        return 1.0
    if shape == "constant":
        return start
    return start + (1.0 - start) * step / steps


class Plateau:
    """Keras ReduceLROnPlateau (mode min, cooldown 0, min_lr 0) on a monitored loss."""

    def __init__(self, factor, patience, min_delta=1e-4):
        self.factor, self.patience, self.min_delta = factor, patience, min_delta
        self.best = None
        self.wait = 0
        self.lr_factor = 1.0

    def end_epoch(self, loss):
        if self.best is None or loss < self.best - self.min_delta:
            self.best = loss
            self.wait = 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.lr_factor *= self.factor
                self.wait = 0
        return self.lr_factor
