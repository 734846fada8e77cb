//! The standard workloads (ids C1–C7, G1–G3, P1–P3, the five activations, S1–S2, B1, MNIST-CNN, X1,
//! and on request the zoo networks),
//! as ready-to-run cases with every buffer allocated up front. Shared by `cargo bench` and the
//! comparison program (`perf/`), so both time exactly the same calls.
#![allow(dead_code)]

use cnnkit::gemm::{MatMut, MatRef, sgemm};
use cnnkit::kernels::*;
use cnnkit::rng::Rng;
use cnnkit::{
    Conv2dGeom, Conv2dParams, LayerSpec, Pool2dGeom, Pool2dParams, Sequential, Shape4, TrainConfig,
    Trainer,
};

/// One timed call.
pub struct Case {
    /// Workload id (`C3`, `G2`, `relu`, `mnist-cnn`, ...).
    pub id: &'static str,
    /// Pass (`fwd`, `bwd_data`, `bwd_weight`, `matmul`, `fwd_train`, `step`, `infer`, `infer_b64`).
    pub op: &'static str,
    /// Floating-point operations per call (0 for memory-bound cases).
    pub flops: f64,
    /// Compulsory bytes moved per call (0 for compute-bound and cache-resident cases).
    pub bytes: f64,
    /// Images per call (training step and inference), for images/s.
    pub images: f64,
    /// The call.
    pub run: Box<dyn FnMut() + Send>,
}

fn case(
    id: &'static str,
    op: &'static str,
    flops: f64,
    bytes: f64,
    run: impl FnMut() + Send + 'static,
) -> Case {
    Case {
        id,
        op,
        flops,
        bytes,
        images: 0.0,
        run: Box::new(run),
    }
}

pub fn randn(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| (r.normal() as f32) * scale).collect()
}

/// A convolution workload: (id, n, c_in, hw, c_out, k, stride, pad, groups).
pub type ConvWorkload = (
    &'static str,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);

pub const CONVS: [ConvWorkload; 7] = [
    ("C1", 64, 1, 28, 32, 3, 1, 1, 1),
    ("C2", 64, 32, 14, 64, 3, 1, 1, 1),
    ("C3", 8, 64, 56, 64, 3, 1, 1, 1),
    ("C4", 8, 64, 56, 128, 3, 2, 1, 1),
    ("C5", 8, 256, 28, 64, 1, 1, 0, 1),
    ("C6", 16, 1, 128, 16, 5, 1, 2, 1),
    ("C7", 8, 128, 56, 128, 3, 1, 1, 128),
];

/// FLOPs of one pass: 2·N·Cout·Hout·Wout·(Cin/groups)·k² (WORKLOADS.md).
pub fn conv_geom(i: usize) -> (Conv2dGeom, f64) {
    let (_, n, ci, hw, co, k, s, p, g) = CONVS[i];
    let geom = Conv2dGeom::new(
        Shape4::new(n, ci, hw, hw),
        co,
        [k, k],
        Conv2dParams::default().stride(s).padding(p).groups(g),
    )
    .expect("standard workload");
    let flops = 2.0 * (n * co * geom.out_plane() * (ci / g) * k * k) as f64;
    (geom, flops)
}

/// The three passes of every convolution workload (weights-and-bias for `bwd_weight`). Build
/// inside the thread pool that will run them (scratch is sized for its thread count).
pub fn conv_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (i, c) in CONVS.iter().enumerate() {
        let id = c.0;
        let (g, flops) = conv_geom(i);
        let x = randn(1, g.x_len(), 1.0);
        let w = randn(2, g.w_len(), 0.1);
        let b = randn(3, g.c_out(), 0.1);
        let dy = randn(4, g.y_len(), 1.0);
        let mut y = vec![0.0; g.y_len()];
        let mut ws = vec![0.0; conv2d_forward_scratch_len(&g)];
        let (x2, w2) = (x.clone(), w.clone());
        v.push(case(id, "fwd", flops, 0.0, move || {
            conv2d_forward(&g, &x2, &w2, Some(&b), &mut y, &mut ws).unwrap()
        }));
        let mut dx = vec![0.0; g.x_len()];
        let mut ws = vec![0.0; conv2d_backward_data_scratch_len(&g)];
        let dy2 = dy.clone();
        v.push(case(id, "bwd_data", flops, 0.0, move || {
            conv2d_backward_data(&g, &w, &dy2, &mut dx, Accum::Replace, &mut ws).unwrap()
        }));
        let (mut dw, mut db) = (vec![0.0; g.w_len()], vec![0.0; g.c_out()]);
        let mut ws = vec![0.0; conv2d_backward_weights_scratch_len(&g)];
        v.push(case(id, "bwd_weight", flops, 0.0, move || {
            conv2d_backward_weights(&g, &x, &dy, &mut dw, Some(&mut db), Accum::Replace, &mut ws)
                .unwrap()
        }));
    }
    v
}

/// (id, m, k, n)
pub const GEMMS: [(&str, usize, usize, usize); 3] = [
    ("G1", 256, 256, 256),
    ("G2", 1024, 1024, 1024),
    ("G3", 64, 3136, 128),
];

pub fn gemm_cases() -> Vec<Case> {
    GEMMS
        .iter()
        .map(|&(id, m, k, n)| {
            let (a, b) = (randn(5, m * k, 1.0), randn(6, k * n, 1.0));
            let mut c = vec![0.0; m * n];
            case(id, "matmul", 2.0 * (m * k * n) as f64, 0.0, move || {
                sgemm(
                    1.0,
                    MatRef::row_major(&a, m, k).unwrap(),
                    MatRef::row_major(&b, k, n).unwrap(),
                    0.0,
                    MatMut::row_major(&mut c, m, n).unwrap(),
                )
                .unwrap()
            })
        })
        .collect()
}

/// A pooling workload: (id, max (else average), n, c, hw, window, stride, pad).
pub type PoolWorkload = (&'static str, bool, usize, usize, usize, usize, usize, usize);

pub const POOLS: [PoolWorkload; 3] = [
    ("P1", true, 64, 32, 28, 2, 2, 0),
    ("P2", false, 64, 32, 28, 2, 2, 0),
    ("P3", true, 8, 64, 112, 3, 2, 1),
];

pub fn pool_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for &(id, max, n, c, hw, k, s, p) in &POOLS {
        let g = Pool2dGeom::new(
            Shape4::new(n, c, hw, hw),
            Pool2dParams::new(k).stride(s).padding(p),
        )
        .unwrap();
        let bytes = 4.0 * (g.x_len() + g.y_len()) as f64;
        let x = randn(7, g.x_len(), 1.0);
        let dy = randn(8, g.y_len(), 1.0);
        let mut y = vec![0.0; g.y_len()];
        let mut dx = vec![0.0; g.x_len()];
        if max {
            let x2 = x.clone();
            let mut y2 = y.clone();
            v.push(case(id, "fwd", 0.0, bytes, move || {
                max_pool2d_forward(&g, &x2, &mut y2, None).unwrap()
            }));
            let mut a = vec![0u32; g.y_len()];
            max_pool2d_forward(&g, &x, &mut y, Some(&mut a)).unwrap();
            let a2 = a.clone();
            v.push(case(id, "fwd_train", 0.0, bytes, move || {
                max_pool2d_forward(&g, &x, &mut y, Some(&mut a)).unwrap()
            }));
            v.push(case(id, "bwd_data", 0.0, bytes, move || {
                max_pool2d_backward(&g, &a2, &dy, &mut dx, Accum::Replace).unwrap()
            }));
        } else {
            v.push(case(id, "fwd", 0.0, bytes, move || {
                avg_pool2d_forward(&g, true, &x, &mut y).unwrap()
            }));
            v.push(case(id, "bwd_data", 0.0, bytes, move || {
                avg_pool2d_backward(&g, true, &dy, &mut dx, Accum::Replace).unwrap()
            }));
        }
    }
    v
}

pub const ACT_N: usize = 4_194_304;

pub fn act_cases() -> Vec<Case> {
    let acts: [(&'static str, Activation); 5] = [
        ("relu", Activation::Relu),
        ("leaky_relu", Activation::LeakyRelu { slope: 0.01 }),
        ("elu", Activation::ELU),
        ("sigmoid", Activation::Sigmoid),
        ("tanh", Activation::Tanh),
    ];
    let nb = 4.0 * ACT_N as f64;
    let mut v = Vec::new();
    for (id, act) in acts {
        let x = randn(9, ACT_N, 1.0);
        let dy = randn(10, ACT_N, 1.0);
        let mut y = vec![0.0; ACT_N];
        activation_forward(act, &x, &mut y).unwrap();
        let (x2, mut y2) = (x.clone(), y.clone());
        v.push(case(id, "fwd", 0.0, 2.0 * nb, move || {
            activation_forward(act, &x2, &mut y2).unwrap()
        }));
        let mut dx = vec![0.0; ACT_N];
        v.push(case(id, "bwd_data", 0.0, 3.0 * nb, move || {
            activation_backward(act, &x, &y, &dy, &mut dx, Accum::Replace).unwrap()
        }));
    }
    v
}

pub fn softmax_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (id, rows, cls) in [("S1", 4096usize, 10usize), ("S2", 256, 1000)] {
        let logits = randn(11, rows * cls, 1.0);
        let mut r = Rng::new(12);
        let labels: Vec<u32> = (0..rows).map(|_| r.below(cls) as u32).collect();
        let (l2, lab2) = (logits.clone(), labels.clone());
        v.push(case(id, "fwd", 0.0, 0.0, move || {
            std::hint::black_box(cross_entropy_loss(cls, &l2, &lab2, 0.0, None).unwrap());
        }));
        let mut d = vec![0.0; rows * cls];
        v.push(case(id, "fwd_bwd", 0.0, 0.0, move || {
            std::hint::black_box(
                cross_entropy_loss(cls, &logits, &labels, 0.0, Some(&mut d)).unwrap(),
            );
        }));
    }
    v
}

pub fn bn_cases() -> Vec<Case> {
    let s = Shape4::new(32, 64, 56, 56);
    let n = s.n * s.c * s.h * s.w;
    let nb = 4.0 * n as f64;
    let (x, dy, g, b) = (
        randn(13, n, 1.0),
        randn(14, n, 1.0),
        randn(15, 64, 1.0),
        randn(16, 64, 1.0),
    );
    let (mut y, mut m, mut i) = (vec![0.0; n], vec![0.0; 64], vec![0.0; 64]);
    let (mut rm, mut rv) = (vec![0.0; 64], vec![1.0; 64]);
    batch_norm_forward_train(
        s,
        1e-5,
        &x,
        Some(&g),
        Some(&b),
        &mut y,
        &mut m,
        &mut i,
        None,
    )
    .unwrap();
    let (x2, g2) = (x.clone(), g.clone());
    let (m2, i2) = (m.clone(), i.clone());
    let mut v = vec![case("B1", "fwd", 0.0, 2.0 * nb, move || {
        batch_norm_forward_train(
            s,
            1e-5,
            &x2,
            Some(&g2),
            Some(&b),
            &mut y,
            &mut m,
            &mut i,
            Some(RunningStats {
                mean: &mut rm,
                var: &mut rv,
                factor: 0.1,
            }),
        )
        .unwrap()
    })];
    let (mut dx, mut dg, mut db) = (vec![0.0; n], vec![0.0; 64], vec![0.0; 64]);
    let mut ws = vec![0.0; batch_norm_backward_scratch_len(s)];
    v.push(case("B1", "bwd_data", 0.0, 3.0 * nb, move || {
        batch_norm_backward(
            s,
            true,
            &x,
            Some(&g),
            &m2,
            &i2,
            &dy,
            &mut dx,
            Some(&mut dg),
            Some(&mut db),
            Accum::Replace,
            &mut ws,
        )
        .unwrap()
    }));
    v
}

/// The MNIST-CNN of WORKLOADS.md.
pub const MNIST_ARCH: &str = "conv(32,3,p=1),relu,maxpool(2),conv(64,3,p=1),relu,maxpool(2),flatten,dense(128),relu,dense(10)";

/// FLOPs of one forward pass of the MNIST-CNN on one image.
pub fn mnist_forward_flops() -> f64 {
    let c1 = 2.0 * (32 * 28 * 28 * 9) as f64;
    let c2 = 2.0 * (64 * 14 * 14 * 32 * 9) as f64;
    c1 + c2 + 2.0 * (3136 * 128) as f64 + 2.0 * (128 * 10) as f64
}

pub fn mnist_cases() -> Vec<Case> {
    let specs = LayerSpec::parse_list(MNIST_ARCH).unwrap();
    let x = randn(17, 64 * 784, 1.0);
    let mut r = Rng::new(18);
    let labels: Vec<u32> = (0..64).map(|_| r.below(10) as u32).collect();
    let model = Sequential::new([1, 28, 28], &specs, 0).unwrap();
    let mut t = Trainer::new(
        model,
        "sgd(lr=0.01,momentum=0.9)".parse().unwrap(),
        TrainConfig::default(),
    )
    .unwrap();
    let fwd = mnist_forward_flops();
    // Training step: 3 × forward − the first convolution's input gradient (not computed).
    let step_flops = 64.0 * (3.0 * fwd - 2.0 * (32 * 28 * 28 * 9) as f64);
    let (xs, ls) = (x.clone(), labels);
    let mut v = vec![Case {
        images: 64.0,
        ..case("mnist-cnn", "step", step_flops, 0.0, move || {
            t.step(&xs, &ls).unwrap();
        })
    }];
    let mut m1 = Sequential::new([1, 28, 28], &specs, 0).unwrap();
    m1.eval();
    let x1 = x[..784].to_vec();
    v.push(Case {
        images: 1.0,
        ..case("mnist-cnn", "infer", fwd, 0.0, move || {
            std::hint::black_box(m1.infer(&x1, 1).unwrap());
        })
    });
    let mut m64 = Sequential::new([1, 28, 28], &specs, 0).unwrap();
    m64.eval();
    v.push(Case {
        images: 64.0,
        ..case("mnist-cnn", "infer_b64", 64.0 * fwd, 0.0, move || {
            std::hint::black_box(m64.infer(&x, 64).unwrap());
        })
    });
    v
}

/// X1 of WORKLOADS.md: the chest-X-ray CNN (four blocks of conv 3x3 without bias, batch norm in
/// training mode and ReLU; max-pool after blocks 1–3, global average pool after block 4; dense to
/// 3 classes), written as a user writes it.
pub const XRAY_ARCH: &str = "conv(32,3,p=1,bias=false),bn,relu,maxpool(2),\
    conv(64,3,p=1,bias=false),bn,relu,maxpool(2),\
    conv(128,3,p=1,bias=false),bn,relu,maxpool(2),\
    conv(128,3,p=1,bias=false),bn,relu,gap,dense(3)";

/// X1's batch.
pub const XRAY_BATCH: usize = 16;

/// FLOPs of X1's convolutions on one image, block by block (the dense layer adds 2·128·3).
fn xray_conv_flops() -> [f64; 4] {
    [(1, 128, 32), (32, 64, 64), (64, 32, 128), (128, 16, 128)]
        .map(|(ci, hw, co): (usize, usize, usize)| 2.0 * (co * hw * hw * ci * 9) as f64)
}

/// X1: the training step (batch 16, Adam lr 1e-3) and batch-1 inference, through the public
/// `Sequential`/`Trainer` API.
pub fn xray_cases() -> Vec<Case> {
    let specs = LayerSpec::parse_list(XRAY_ARCH).unwrap();
    let n = XRAY_BATCH;
    let x = randn(19, n * 128 * 128, 1.0);
    let mut r = Rng::new(20);
    let labels: Vec<u32> = (0..n).map(|_| r.below(3) as u32).collect();
    let model = Sequential::new([1, 128, 128], &specs, 0).unwrap();
    let mut t = Trainer::new(
        model,
        "adam(lr=1e-3)".parse().unwrap(),
        TrainConfig::default(),
    )
    .unwrap();
    let conv = xray_conv_flops();
    let fwd = conv.iter().sum::<f64>() + 2.0 * (128 * 3) as f64;
    // Training step: 3 × forward − the first convolution's input gradient (not computed).
    let step_flops = n as f64 * (3.0 * fwd - conv[0]);
    let mut v = vec![Case {
        images: n as f64,
        ..case("X1", "step", step_flops, 0.0, move || {
            t.step(&x, &labels).unwrap();
        })
    }];
    let mut m1 = Sequential::new([1, 128, 128], &specs, 0).unwrap();
    m1.eval();
    let x1 = randn(21, 128 * 128, 1.0);
    v.push(Case {
        images: 1.0,
        ..case("X1", "infer", fwd, 0.0, move || {
            std::hint::black_box(m1.infer(&x1, 1).unwrap());
        })
    });
    v
}

/// The zoo networks timed in the `zoo` group: a training step on a batch of
/// [`ZOO_BATCH`] grey 224x224 images with 2 classes (SGD with momentum, training mode: batch
/// statistics, dropout, stochastic depth) and batch-1 inference, as torchvision's models adapted to
/// one input channel (the chest-X-ray setting); and `unet`: `zoo::unet` of width 32 and depth 4
/// on grey 128x128 images, its step an image-to-image MSE step on [`ZOO_BATCH`] of them.
pub const ZOO: [&str; 7] = [
    "resnet18",
    "resnet34",
    "resnet50",
    "densenet121",
    "mobilenet_v2",
    "efficientnet_b0",
    "unet",
];

/// The zoo group's training batch.
pub const ZOO_BATCH: usize = 8;

/// The `zoo` group (see [`ZOO`]).
pub fn zoo_cases() -> Vec<Case> {
    let n = ZOO_BATCH;
    let x = randn(23, n * 224 * 224, 1.0);
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 2).collect();
    let mut v = Vec::new();
    for name in ZOO.into_iter().filter(|&z| z != "unet") {
        let model = cnnkit::zoo::build(name, [1, 224, 224], 2)
            .unwrap()
            .build(0)
            .unwrap();
        let mut t = Trainer::new(
            model,
            "sgd(lr=0.01,momentum=0.9)".parse().unwrap(),
            TrainConfig::default(),
        )
        .unwrap();
        let (xs, ls) = (x.clone(), labels.clone());
        v.push(Case {
            images: n as f64,
            ..case(name, "step", 0.0, 0.0, move || {
                t.step(&xs, &ls).unwrap();
            })
        });
        let mut m1 = cnnkit::zoo::build(name, [1, 224, 224], 2)
            .unwrap()
            .build(0)
            .unwrap();
        m1.eval();
        let x1 = x[..224 * 224].to_vec();
        v.push(Case {
            images: 1.0,
            ..case(name, "infer", 0.0, 0.0, move || {
                std::hint::black_box(m1.infer(&x1, 1).unwrap());
            })
        });
    }
    let unet = || {
        cnnkit::zoo::unet([1, 128, 128], 1, 32, 4)
            .unwrap()
            .build(0)
            .unwrap()
    };
    let cfg = TrainConfig {
        loss: cnnkit::Loss::Mse,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(unet(), "adam".parse().unwrap(), cfg).unwrap();
    let x = randn(24, n * 128 * 128, 1.0);
    let target = randn(25, n * 128 * 128, 1.0);
    let xs = x.clone();
    v.push(Case {
        images: n as f64,
        ..case("unet", "step", 0.0, 0.0, move || {
            t.step_to(&xs, &target).unwrap();
        })
    });
    let mut m1 = unet();
    m1.eval();
    let x1 = x[..128 * 128].to_vec();
    v.push(Case {
        images: 1.0,
        ..case("unet", "infer", 0.0, 0.0, move || {
            std::hint::black_box(m1.infer(&x1, 1).unwrap());
        })
    });
    v
}

/// The `bf16` group: the training steps of the `mnist`, `xray` and `zoo` groups with
/// `Precision::Bf16` set around each call (op `step_bf16`), beside PyTorch's steps under
/// `torch.autocast("cpu", torch.bfloat16)`.
pub fn bf16_cases() -> Vec<Case> {
    use cnnkit::gemm::{Precision, set_precision};
    [mnist_cases(), xray_cases(), zoo_cases()]
        .into_iter()
        .flatten()
        .filter(|c| c.op == "step")
        .map(|mut c| {
            let mut run = c.run;
            c.op = "step_bf16";
            c.run = Box::new(move || {
                set_precision(Precision::Bf16);
                run();
                set_precision(Precision::F32);
            });
            c
        })
        .collect()
}

/// The groups run by default, by the names the comparison program and `torch_bench.py` use
/// (`zoo` is asked for by name: its steps take seconds each).
pub const GROUPS: [&str; 8] = [
    "gemm", "conv", "pool", "act", "softmax", "bn", "mnist", "xray",
];

/// The group a workload case belongs to (`C3` → `conv`, `X1` → `xray`, `relu` → `act`, a
/// `step_bf16` → `bf16`, ...).
pub fn group_of(id: &str, op: &str) -> &'static str {
    if op.ends_with("_bf16") {
        return "bf16";
    }
    if ZOO.contains(&id) {
        return "zoo";
    }
    match id.chars().next() {
        Some('C') => "conv",
        Some('G') => "gemm",
        Some('P') => "pool",
        Some('S') => "softmax",
        Some('B') => "bn",
        Some('X') => "xray",
        _ if id.starts_with("mnist") => "mnist",
        _ => "act",
    }
}

pub fn group(name: &str) -> Vec<Case> {
    match name {
        "gemm" => gemm_cases(),
        "conv" => conv_cases(),
        "pool" => pool_cases(),
        "act" => act_cases(),
        "softmax" => softmax_cases(),
        "bn" => bn_cases(),
        "mnist" => mnist_cases(),
        "xray" => xray_cases(),
        "zoo" => zoo_cases(),
        "bf16" => bf16_cases(),
        _ => Vec::new(),
    }
}

/// Timing statistics of one case.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub reps: usize,
}

/// The timing rule of the reference measurements: warm up for at least 3 calls and 0.15 s, then
/// time at least 10 calls and 0.6 s individually; report the median.
pub fn measure(f: &mut (dyn FnMut() + Send)) -> Timing {
    use std::time::Instant;
    let t0 = Instant::now();
    let mut n = 0;
    while n < 3 || t0.elapsed().as_secs_f64() < 0.15 {
        f();
        n += 1;
    }
    let per = t0.elapsed().as_secs_f64() / n as f64;
    let reps = ((0.6 / per).ceil() as usize).clamp(10, 200_000);
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Timing {
        median_ms: times[reps / 2],
        min_ms: times[0],
        max_ms: times[reps - 1],
        reps,
    }
}
