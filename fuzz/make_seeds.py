"""Writes the seed inputs of cnnkit's fuzz targets into fuzz/corpus/<target>/seed-*.

Needs numpy, Pillow, torch and safetensors (`pip install torch safetensors pillow`). The seeds
are committed; rerun only to change them. Crash reproducers found by the fuzzers are committed
beside them under their own names (`crash-*`), never overwritten here.
"""
import gzip
import io
import os
import struct

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def idx(dims, data):
    return bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + bytes(int(v) for v in data)


rng = np.random.default_rng(7)

# IDX. For the two-file check the first byte gives the label file's length / 4.
images = idx([4, 2, 2], rng.integers(0, 256, 16))
labels = idx([4], [0, 1, 1, 0])  # 12 bytes
put("idx", "images", images)
put("idx", "labels", labels)
put("idx", "pair", bytes([len(labels) // 4]) + labels + images)
put("idx", "gzip", gzip.compress(images))
put("idx", "truncated", images[:-3])
put("idx", "huge-dims", idx([0xFFFFFFFF, 0xFFFFFFFF, 2], []))


def png(arr, mode=None):
    b = io.BytesIO()
    Image.fromarray(arr, mode).save(b, "PNG")
    return b.getvalue()


def jpg(arr):
    b = io.BytesIO()
    Image.fromarray(arr).save(b, "JPEG", quality=80)
    return b.getvalue()


SEP = b"\n--\n"
g = rng.integers(0, 256, (5, 6), dtype=np.uint8)
rgb = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
g16 = rng.integers(0, 65536, (5, 6), dtype=np.uint16)
put("image_folder", "gray", bytes([0]) + SEP.join([png(g), jpg(rgb), png(rgb), png(g)]))
put("image_folder", "rgb-clahe", bytes([1 | 2 | 64]) + SEP.join([png(rgb), jpg(rgb), png(g), jpg(g)]))
put("image_folder", "resize-eq-splits", bytes([4 | 8 | 16]) + SEP.join([png(g), png(g), png(g), png(g)]))
put("image_folder", "sixteen-bit", bytes([2 | 32]) + SEP.join([png(g16), png(g16)]))
put("image_folder", "mixed-sizes", bytes([0]) + SEP.join([png(g), png(g[:3, :4])]))

# Checkpoints as cnnkit writes them (PyTorch names, architecture metadata) and variants.
torch.manual_seed(0)
nets = {
    "cnn": ("conv(2,3,p=1),relu,maxpool(2),flatten,dense(3)", "1x4x4",
            torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(8, 3))),
    "bn": ("conv(2,3,bias=false),bn,prelu,gap,dense(2)", "2x5x4",
           torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, bias=False), torch.nn.BatchNorm2d(2),
                               torch.nn.PReLU(),
                               torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()),
                               torch.nn.Linear(2, 2))),
}
for name, (arch, shape, net) in nets.items():
    meta = {"format": "pt", "cnnkit.arch": arch, "cnnkit.input": shape}
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    put("checkpoint", name, save(sd, meta))
    put("checkpoint", name + "-no-arch", save(sd, {"format": "pt"}))
    put("checkpoint", name + "-wrong-arch", save(sd, dict(meta, **{"cnnkit.arch": "flatten,dense(3)"})))
put("checkpoint", "empty", save({}, {}))

# Kernels: geometry bytes (n, c, h, w, seed, short, conv?, ...), conv and pooling.
for i, b in enumerate([
    [1, 3, 7, 6, 1, 1, 0, 4, 3, 2, 2, 1, 1, 1, 0, 1, 1, 1],
    [0, 4, 9, 9, 2, 1, 0, 4, 3, 3, 1, 1, 1, 1, 1, 1, 4],   # depthwise
    [0, 2, 5, 8, 3, 1, 0, 3, 1, 1, 1, 1, 0, 0, 0, 0, 1],   # 1x1
    [1, 1, 6, 5, 4, 1, 1, 3, 3, 2, 2, 1, 1, 1],            # max/avg pool 3x3 s2 p1
    [0, 2, 4, 7, 5, 1, 1, 2, 3, 2, 3, 1, 0, 0],            # pool, include_pad
    [0, 1, 1, 1, 6, 0, 0, 1, 1, 1, 1, 1],                  # short output
]):
    put("kernels", str(i), bytes(b))

# CLAHE: (w, h, tiles_x, tiles_y, clip, depth, pixels...).
for i, head in enumerate([[7, 5, 2, 3, 30, 1], [16, 16, 8, 8, 43, 1], [9, 4, 3, 1, 3, 0],
                          [1, 1, 1, 1, 1, 1], [12, 3, 12, 12, 0, 1]]):
    w, h = head[0], head[1]
    put("clahe", str(i), bytes(head) + bytes(rng.integers(0, 256, w * h, dtype=np.uint8)))

# Layer lists: the presets and every layer form.
for i, s in enumerate([
    "conv(32,3,p=1),relu,maxpool(2),flatten,dense(10)",
    "conv(6,5,p=2),relu,maxpool(2),conv(16,5,p=2),relu,maxpool(2),flatten,dense(120),relu,dense(84),relu,dense(10)",
    "conv(4,3,p=1),bn,relu,conv(4,3,p=1),bn(eps=0.001,momentum=none),relu,maxpool(2),flatten,dense(8),relu,dropout(0.5),dense(2)",
    "conv(4,3x2,s=2x1,p=1x0,d=1x2,g=1,bias=false),leakyrelu(0.2),avgpool(2,s=1,p=1,count_include_pad=false),gap,dense(3,bias=false)",
    "conv(2,1),elu(0.5),sigmoid,tanh,softplus(beta=2,threshold=10),gelu,gelu_tanh,prelu,prelu(channels),rrelu(0.1,0.3),ln(eps=0.0001),flatten,dense(1)",
    "flatten,dense(1",
]):
    put("layer_spec", str(i), s.encode())

# ONNX: the small networks of tests/fixtures/onnx (torch.onnx.export) and some of its hostile
# files (run tests/fixtures/gen_onnx.py first).
FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "onnx")
for name in ["convnet", "mobile", "unet", "matmul", "gelu20", "folded"]:
    with open(os.path.join(FIX, name + ".onnx"), "rb") as f:
        put("onnx", name, f.read())
for name in ["cycle", "ceil_mode", "asymmetric_pads", "float16", "huge_dims"]:
    with open(os.path.join(FIX, "hostile", name + ".onnx"), "rb") as f:
        put("onnx", "hostile-" + name, f.read())
