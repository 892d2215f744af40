#!/usr/bin/env python3
"""Write an IDX dataset (MNIST, Fashion-MNIST) in one of the `files` dataset's layouts.

    python3 benches/python/idx_to_files.py data/fashion-mnist OUT --layout npz|keras|npy|png

The check that the `files` dataset reads other people's files as the built-in readers read
IDX: train on OUT with `data.dataset = "files"` and `data.shape = [1, 28, 28]`, and compare
with the same config on the IDX files. Only numpy is needed; PNGs are written with zlib (8-bit
grayscale, one IDAT chunk), one folder per class named by its label.
"""
import argparse
import gzip
import os
import struct
import zlib

import numpy as np


def read_idx(path):
    opener = gzip.open if not os.path.exists(path) else open
    path = path if os.path.exists(path) else path + ".gz"
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def write_png(path, img):
    h, w = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(kind, body):
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw)))
        f.write(chunk(b"IEND", b""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("idx_dir")
    ap.add_argument("out")
    ap.add_argument("--layout", choices=["npz", "keras", "npy", "png"], required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    splits = {}
    for split, prefix in [("train", "train"), ("test", "t10k")]:
        x = read_idx(os.path.join(a.idx_dir, f"{prefix}-images-idx3-ubyte"))
        y = read_idx(os.path.join(a.idx_dir, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        splits[split] = (x, y)
    if a.layout == "keras":
        np.savez_compressed(os.path.join(a.out, "data.npz"), x_train=splits["train"][0],
                            y_train=splits["train"][1], x_test=splits["test"][0],
                            y_test=splits["test"][1])
        return
    for split, (x, y) in splits.items():
        if a.layout == "npz":
            np.savez(os.path.join(a.out, f"{split}.npz"), images=x, labels=y)
        elif a.layout == "npy":
            np.save(os.path.join(a.out, f"{split}_images.npy"), x)
            np.save(os.path.join(a.out, f"{split}_labels.npy"), y)
        else:
            for i, (img, label) in enumerate(zip(x, y)):
                d = os.path.join(a.out, split, str(label))
                os.makedirs(d, exist_ok=True)
                write_png(os.path.join(d, f"{i:05d}.png"), img)


if __name__ == "__main__":
    main()
