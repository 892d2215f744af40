#!/usr/bin/env python3
"""PyTorch reference for inference of the dense FCN 784-300-100-10 (ELU, no biases), the
baseline the exported signed Supermask is compared with (benches/benches/infer.rs).

Times `model(x)` under torch.inference_mode() at batch 1 and batch 256 (inputs N(0,1), not
timed), median of --reps calls after warm-up. Prints one JSON line:
{"framework": "pytorch", "batch1_seconds": ..., "batch256_seconds": ...}.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    sizes = [784, 300, 100, 10]
    ws = [torch.randn(o, i, generator=gen) * (2.0 / i) ** 0.5 for i, o in zip(sizes[:-1], sizes[1:])]

    def model(x):
        for j, w in enumerate(ws):
            x = F.linear(x, w)
            if j < len(ws) - 1:
                x = F.elu(x)
        return x

    out = {"framework": "pytorch", "torch_version": torch.__version__, "threads": args.threads}
    with torch.inference_mode():
        for batch in (1, 256):
            x = torch.randn(batch, 784, generator=gen)
            for _ in range(20):
                model(x)
            times = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
            out[f"batch{batch}_seconds"] = statistics.median(times)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
