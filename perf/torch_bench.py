#!/usr/bin/env python3
"""PyTorch side of the comparison: the standard workloads with the same timing rule as cnnkit's
(warm-up of >= 3 calls and >= 0.15 s, then >= 10 individually timed calls and >= 0.6 s; the
median). One JSON line per case: {"id", "op", "threads", "median_ms"}, and for inference cases,
when the onnxruntime package is installed, "ort_ms": the same module exported with
torch.onnx.export (opset 17) and run by onnxruntime's CPU provider on as many intra-op threads
(one inter-op thread, all graph optimisations), timed by the same rule.

    python3 perf/torch_bench.py --threads 1 2 --only conv,gemm

Run by the comparison program (`cargo run --release -p cnnkit-perf --bin compare`), alternating
with cnnkit. Re-executes itself with GLIBC_TUNABLES so freed tensor buffers are reused instead of
being page-faulted in again on every call (as the reference measurements did).
"""
import argparse
import contextlib
import io
import json
import math
import os
import sys
import time

MALLOC = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296"


def bench(fn, min_time=0.6, min_reps=10, warm_time=0.15):
    t0 = time.perf_counter()
    n = 0
    while n < 3 or time.perf_counter() - t0 < warm_time:
        fn()
        n += 1
    per = (time.perf_counter() - t0) / n
    reps = int(min(max(min_reps, math.ceil(min_time / per)), 200000))
    times = []
    for _ in range(reps):
        t = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t) * 1e-6)
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--only", default="gemm,conv,pool,act,softmax,bn,mnist,xray")
    args = ap.parse_args()
    if "GLIBC_TUNABLES" not in os.environ:
        os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, GLIBC_TUNABLES=MALLOC))
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(0)
    # Set by the bf16 group: the steps run under bf16 autocast and are reported as step_bf16.
    AUTOCAST = [False]

    def mixed():
        if AUTOCAST[0]:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step_op():
        return "step_bf16" if AUTOCAST[0] else "step"

    def out(id_, op, t, ms, ort_ms=None):
        line = {"id": id_, "op": op, "threads": t, "median_ms": ms}
        if ort_ms is not None:
            line["ort_ms"] = ort_ms
        print(json.dumps(line), flush=True)

    def ort(net, x, t, name=None):
        """The evaluation-mode `net` on `x` through onnxruntime (None without the package). With
        CNNKIT_ONNX_DIR set, the exported file is also written there as NAME.onnx, for `compare`
        to time cnnkit on the very same file."""
        try:
            import onnxruntime
        except ImportError:
            return None
        import warnings

        f = io.BytesIO()
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of the dynamo one, which needs
            # onnxscript; both write the same operators for these networks.
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (x,), f, input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
        where = os.environ.get("CNNKIT_ONNX_DIR")
        if where and name:
            with open(os.path.join(where, f"{name}.onnx"), "wb") as fh:
                fh.write(f.getvalue())
        so = onnxruntime.SessionOptions()
        so.intra_op_num_threads = t
        so.inter_op_num_threads = 1
        so.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = onnxruntime.InferenceSession(f.getvalue(), so, providers=["CPUExecutionProvider"])
        xn = x.numpy()
        return bench(lambda: sess.run(None, {"x": xn}))

    def gemm(t):
        for gid, m, k, n in [("G1", 256, 256, 256), ("G2", 1024, 1024, 1024), ("G3", 64, 3136, 128)]:
            a, b, c = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
            out(gid, "matmul", t, bench(lambda: torch.mm(a, b, out=c)))

    def conv(t):
        for cid, n, ci, h, co, k, s, p, g in [("C1", 64, 1, 28, 32, 3, 1, 1, 1), ("C2", 64, 32, 14, 64, 3, 1, 1, 1),
                                               ("C3", 8, 64, 56, 64, 3, 1, 1, 1), ("C4", 8, 64, 56, 128, 3, 2, 1, 1),
                                               ("C5", 8, 256, 28, 64, 1, 1, 0, 1), ("C6", 16, 1, 128, 16, 5, 1, 2, 1),
                                               ("C7", 8, 128, 56, 128, 3, 1, 1, 128)]:
            x, w, b = torch.randn(n, ci, h, h), torch.randn(co, ci // g, k, k) * 0.1, torch.randn(co) * 0.1
            with torch.no_grad():
                y = F.conv2d(x, w, b, s, p, 1, g)
                out(cid, "fwd", t, bench(lambda: F.conv2d(x, w, b, s, p, 1, g)))
            gy = torch.randn_like(y)
            cb = torch.ops.aten.convolution_backward
            bwd = lambda mask: cb(gy, x, w, [co], [s, s], [p, p], [1, 1], False, [0, 0], g, mask)
            out(cid, "bwd_data", t, bench(lambda: bwd([True, False, False])))
            out(cid, "bwd_weight", t, bench(lambda: bwd([False, True, True])))

    def pool(t):
        for pid, kind, n, c, hw, win, s, p in [("P1", "max", 64, 32, 28, 2, 2, 0), ("P2", "avg", 64, 32, 28, 2, 2, 0),
                                               ("P3", "max", 8, 64, 112, 3, 2, 1)]:
            x = torch.randn(n, c, hw, hw)
            if kind == "max":
                with torch.no_grad():
                    out(pid, "fwd", t, bench(lambda: F.max_pool2d(x, win, s, p)))
                mp = torch.ops.aten.max_pool2d_with_indices
                out(pid, "fwd_train", t, bench(lambda: mp(x, [win, win], [s, s], [p, p], [1, 1], False)))
                y, idx = mp(x, [win, win], [s, s], [p, p], [1, 1], False)
                gy = torch.randn_like(y)
                mb = torch.ops.aten.max_pool2d_with_indices_backward
                out(pid, "bwd_data", t, bench(lambda: mb(gy, x, [win, win], [s, s], [p, p], [1, 1], False, idx)))
            else:
                with torch.no_grad():
                    out(pid, "fwd", t, bench(lambda: F.avg_pool2d(x, win, s, p)))
                gy = torch.randn_like(F.avg_pool2d(x, win, s, p))
                ab = torch.ops.aten.avg_pool2d_backward
                out(pid, "bwd_data", t, bench(lambda: ab(gy, x, [win, win], [s, s], [p, p], False, True, None)))

    def act(t):
        x, gy = torch.randn(4194304), torch.randn(4194304)
        a = torch.ops.aten
        with torch.no_grad():
            for name, fwd, bwd in [("relu", lambda: F.relu(x), lambda y: a.threshold_backward(gy, x, 0.0)),
                                   ("leaky_relu", lambda: F.leaky_relu(x, 0.01), lambda y: a.leaky_relu_backward(gy, x, 0.01, False)),
                                   ("elu", lambda: F.elu(x, 1.0), lambda y: a.elu_backward(gy, 1.0, 1.0, 1.0, False, x)),
                                   ("sigmoid", lambda: torch.sigmoid(x), lambda y: a.sigmoid_backward(gy, y)),
                                   ("tanh", lambda: torch.tanh(x), lambda y: a.tanh_backward(gy, y))]:
                out(name, "fwd", t, bench(fwd))
                y = fwd()
                out(name, "bwd_data", t, bench(lambda: bwd(y)))

    def softmax(t):
        for sid, rows, cls in [("S1", 4096, 10), ("S2", 256, 1000)]:
            logits, tgt = torch.randn(rows, cls), torch.randint(0, cls, (rows,))
            with torch.no_grad():
                out(sid, "fwd", t, bench(lambda: F.cross_entropy(logits, tgt)))
            lr = logits.clone().requires_grad_(True)

            def fb():
                return torch.autograd.grad(F.cross_entropy(lr, tgt), lr)

            out(sid, "fwd_bwd", t, bench(fb))

    def bn(t):
        x, wt, bs = torch.randn(32, 64, 56, 56), torch.randn(64), torch.randn(64)
        rm, rv = torch.zeros(64), torch.ones(64)
        with torch.no_grad():
            out("B1", "fwd", t, bench(lambda: F.batch_norm(x, rm, rv, wt, bs, True, 0.1, 1e-5)))
        y, sm, si = torch.ops.aten.native_batch_norm(x, wt, bs, rm, rv, True, 0.1, 1e-5)[:3]
        gy = torch.randn_like(x)
        bb = torch.ops.aten.native_batch_norm_backward
        out("B1", "bwd_data", t, bench(lambda: bb(gy, x, wt, rm, rv, sm, si, True, 1e-5, [True, True, True])))

    def mnist(t):
        net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1),
                            nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))

        def step():
            opt.zero_grad(set_to_none=True)
            with mixed():
                loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()

        out("mnist-cnn", step_op(), t, bench(step, min_time=1.5))
        if AUTOCAST[0]:
            return
        net.eval()
        x1 = torch.randn(1, 1, 28, 28)
        o1, o64 = ort(net, x1, t), ort(net, x, t)
        with torch.inference_mode():
            out("mnist-cnn", "infer", t, bench(lambda: net(x1)), o1)
            out("mnist-cnn", "infer_b64", t, bench(lambda: net(x)), o64)

    def xray(t):
        class XrayNet(nn.Module):
            def __init__(self):
                super().__init__()
                chans = [(1, 32), (32, 64), (64, 128), (128, 128)]
                self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in chans)
                self.bns = nn.ModuleList(nn.BatchNorm2d(b) for _, b in chans)
                self.fc = nn.Linear(128, 3)

            def forward(self, x):
                for i, (c, b) in enumerate(zip(self.convs, self.bns)):
                    x = F.relu(b(c(x)))
                    x = F.max_pool2d(x, 2) if i < 3 else F.adaptive_avg_pool2d(x, 1)
                return self.fc(x.flatten(1))

        net = XrayNet()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        x, y = torch.randn(16, 1, 128, 128), torch.randint(0, 3, (16,))

        def step():
            opt.zero_grad(set_to_none=True)
            with mixed():
                loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()

        out("X1", step_op(), t, bench(step, min_time=2.0))
        if AUTOCAST[0]:
            return
        net.eval()
        x1 = torch.randn(1, 1, 128, 128)
        o1 = ort(net, x1, t)
        with torch.inference_mode():
            out("X1", "infer", t, bench(lambda: net(x1)), o1)

    def zoo(t):
        # torchvision's networks adapted to one grey channel and 2 classes, as cnnkit::zoo builds them.
        import torchvision

        for name in ["resnet18", "resnet34", "resnet50", "densenet121", "mobilenet_v2", "efficientnet_b0"]:
            net = getattr(torchvision.models, name)(weights=None, num_classes=2)
            if name.startswith("resnet"):
                net.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
            elif name.startswith("densenet"):
                net.features.conv0 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
            else:
                net.features[0][0] = nn.Conv2d(1, 32, 3, 2, 1, bias=False)
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
            x, y = torch.randn(8, 1, 224, 224), torch.tensor([0, 1] * 4)

            def step():
                opt.zero_grad(set_to_none=True)
                with mixed():
                    loss = F.cross_entropy(net(x), y)
                loss.backward()
                opt.step()

            net.train()
            out(name, step_op(), t, bench(step, min_time=2.0))
            if AUTOCAST[0]:
                continue
            net.eval()
            x1 = torch.randn(1, 1, 224, 224)
            o1 = ort(net, x1, t, name)
            with torch.inference_mode():
                out(name, "infer", t, bench(lambda: net(x1)), o1)

        # cnnkit::zoo::unet([1, 128, 128], 1, 32, 4): padded 3x3 convolutions, 2x2 transposed
        # convolutions up, skip connections concatenated before the upsampled map; MSE, Adam.
        class UNet(nn.Module):
            def __init__(self, width=32, depth=4):
                super().__init__()

                def double(i, o):
                    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.ReLU(), nn.Conv2d(o, o, 3, padding=1), nn.ReLU())

                self.enc, self.up, self.dec = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
                c_in = 1
                for i in range(depth):
                    self.enc.append(double(c_in, width << i))
                    c_in = width << i
                self.bottleneck = double(c_in, width << depth)
                c_in = width << depth
                for i in reversed(range(depth)):
                    c = width << i
                    self.up.append(nn.ConvTranspose2d(c_in, c, 2, stride=2))
                    self.dec.append(double(2 * c, c))
                    c_in = c
                self.head = nn.Conv2d(width, 1, 1)

            def forward(self, x):
                skips = []
                for e in self.enc:
                    x = e(x)
                    skips.append(x)
                    x = F.max_pool2d(x, 2)
                x = self.bottleneck(x)
                for up, dec in zip(self.up, self.dec):
                    x = dec(torch.cat([skips.pop(), up(x)], 1))
                return self.head(x)

        net = UNet()
        opt = torch.optim.Adam(net.parameters())
        x, target = torch.randn(8, 1, 128, 128), torch.randn(8, 1, 128, 128)

        def unet_step():
            opt.zero_grad(set_to_none=True)
            with mixed():
                loss = F.mse_loss(net(x), target)
            loss.backward()
            opt.step()

        net.train()
        out("unet", step_op(), t, bench(unet_step, min_time=2.0))
        if AUTOCAST[0]:
            return
        net.eval()
        x1 = torch.randn(1, 1, 128, 128)
        o1 = ort(net, x1, t, "unet")
        with torch.inference_mode():
            out("unet", "infer", t, bench(lambda: net(x1)), o1)

    def bf16(t):
        # The training steps of mnist, xray and zoo under torch.autocast("cpu", torch.bfloat16),
        # reported as op step_bf16 (inference is skipped).
        AUTOCAST[0] = True
        try:
            for g in (mnist, xray, zoo):
                g(t)
        finally:
            AUTOCAST[0] = False

    groups = {"gemm": gemm, "conv": conv, "pool": pool, "act": act, "softmax": softmax, "bn": bn, "mnist": mnist,
              "xray": xray, "zoo": zoo, "bf16": bf16}
    for t in args.threads:
        torch.set_num_threads(t)
        for g in args.only.split(","):
            groups[g](t)


if __name__ == "__main__":
    main()
