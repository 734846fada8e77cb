#!/usr/bin/env python3
"""Writes data/digits-images.idx3 and data/digits-labels.idx1: the UCI optical recognition of
handwritten digits test set as distributed by scikit-learn (`sklearn.datasets.load_digits`):
1,797 images of 8x8 pixels with 17 grey levels (0..16), digits 0-9.

Source: E. Alpaydin, C. Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine
Learning Repository, 1998, https://doi.org/10.24432/C50P49 (CC BY 4.0).

    pip install scikit-learn && python3 data/make_digits.py
"""
import struct

from sklearn.datasets import load_digits

d = load_digits()
images = d.images.astype("uint8")  # values 0..16
labels = d.target.astype("uint8")
with open("data/digits-images.idx3", "wb") as f:
    f.write(struct.pack(">BBBB", 0, 0, 0x08, 3))
    f.write(struct.pack(">III", *images.shape))
    f.write(images.tobytes())
with open("data/digits-labels.idx1", "wb") as f:
    f.write(struct.pack(">BBBB", 0, 0, 0x08, 1))
    f.write(struct.pack(">I", labels.shape[0]))
    f.write(labels.tobytes())
