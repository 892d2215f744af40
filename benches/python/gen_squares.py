#!/usr/bin/env python3
"""Writes the generated CIFAR-10 task of tests/tests/cifar_train.rs (the same generator and
the same bytes) to OUT/cifar-10-batches-bin, so that supermask's CLI and the PyTorch referee
(torch_train.py --data OUT) train on it side by side.

Usage: gen_squares.py OUT [--per-file N] [--test N]
Class c: a bright (220) 8x8 square in channel c % 3 at row (c // 3) * 8, column (c % 4) * 8,
on uniform noise 0..79 elsewhere; labels and noise from the test's 64-bit LCG (Knuth's MMIX
constants, the value's top 31 bits).
"""
import argparse
import os

import numpy as np

MASK = (1 << 64) - 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--per-file", type=int, default=160)
    ap.add_argument("--test", type=int, default=200)
    a = ap.parse_args()
    state = [7]

    def nxt():
        state[0] = (state[0] * 6364136223846793005 + 1442695040888963407) & MASK
        return state[0] >> 33

    root = os.path.join(a.out, "cifar-10-batches-bin")
    os.makedirs(root, exist_ok=True)
    names = [(f"data_batch_{i}.bin", a.per_file) for i in range(1, 6)]
    names.append(("test_batch.bin", a.test))
    for name, n in names:
        out = bytearray()
        for _ in range(n):
            c = nxt() % 10
            out.append(c)
            ch, y0, x0 = c % 3, (c // 3) * 8, (c % 4) * 8
            for k in range(3):
                for y in range(32):
                    for x in range(32):
                        on = k == ch and y0 <= y < y0 + 8 and x0 <= x < x0 + 8
                        out.append(220 if on else nxt() % 80)
        tmp = os.path.join(root, name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(bytes(out))
        os.replace(tmp, os.path.join(root, name))
    print(f"wrote {root}: 5 x {a.per_file} training, {a.test} test images")


if __name__ == "__main__":
    main()
