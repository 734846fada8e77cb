//! After the first step, a training step (forward, loss, backward, optimizer update) and an
//! inference pass make no heap allocation at all, on one thread and on a two-thread rayon pool:
//! every buffer, scratch area and GEMM packing buffer is reused. A counting global allocator
//! proves it.
//!
//! It counts cnnkit's allocations only: those on the calling thread and inside the closures
//! cnnkit hands to the rayon pool, on whichever thread runs them (`cnnkit::par::probe` marks
//! them), but not the pool's own bookkeeping between them, which allocates now and then
//! depending on how the threads happen to be scheduled. So the count is exact, whatever else
//! the machine is doing, and still sees every allocation cnnkit makes, on any thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

/// Counts one allocation if counting is on and the thread runs cnnkit's code.
fn count() {
    if COUNTING.load(Ordering::Relaxed) && cnnkit::par::probe::active() {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One counting window at a time: the tests of this file run in parallel, and the counter is
/// global, so a window of one test (the first test's deliberate one-allocation check, say) that
/// overlapped another's would show up in both counts.
static WINDOW: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Allocations made by `f` (on this thread, and in cnnkit's closures on any thread).
fn allocations(f: impl FnOnce()) -> usize {
    let _window = WINDOW.lock().unwrap_or_else(|e| e.into_inner());
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let was = cnnkit::par::probe::set(true);
    f();
    cnnkit::par::probe::set(was);
    COUNTING.store(false, Ordering::SeqCst);
    ALLOCS.load(Ordering::SeqCst)
}

/// Allocations in three training steps of `model` with optimizer `opt`, after two that set its
/// buffers up.
fn steady_steps(model: cnnkit::Model, opt: &str, x: &[f32], labels: &[u32]) -> usize {
    use cnnkit::{TrainConfig, Trainer};
    let mut t = Trainer::new(model, opt.parse().unwrap(), TrainConfig::default()).unwrap();
    t.step(x, labels).unwrap();
    t.step(x, labels).unwrap();
    allocations(|| {
        for _ in 0..3 {
            t.step(x, labels).unwrap();
        }
    })
}

/// Held by the tests that build convolutions: the Winograd test changes the process-wide
/// algorithm, and a model planned under one setting refuses to run under another.
static CONVOLUTIONS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn steady_state_training_and_inference_do_not_allocate() {
    let _conv = CONVOLUTIONS.lock().unwrap_or_else(|e| e.into_inner());
    // The MNIST-CNN of the benchmarks, every other layer kind that keeps buffers, X1, residual blocks.
    let archs = [
        "conv(32,3,p=1),relu,maxpool(2),conv(64,3,p=1),relu,maxpool(2),flatten,dense(128),relu,dense(10)",
        "conv(8,3,p=1),bn,prelu(channels),conv(8,3,p=1,g=8),gelu,avgpool(3,s=2,p=1),conv(4,1),ln,rrelu,dropout(0.2),gap,dense(10)",
        // X1's layers (the chest-X-ray CNN of the benchmarks, on 28x28 and 10 classes).
        "conv(32,3,p=1,bias=false),bn,relu,maxpool(2),conv(64,3,p=1,bias=false),bn,relu,maxpool(2),\
         conv(128,3,p=1,bias=false),bn,relu,maxpool(2),conv(128,3,p=1,bias=false),bn,relu,gap,dense(10)",
        // Residual blocks with identity and projection shortcuts (the resnet preset's kinds).
        "conv(8,3,p=1,bias=false),bn,relu,res(8),res(16,s=2),res(16),gap,dense(10)",
        // The layers of the mobile and reconstruction networks.
        "conv(4,3,p=1),bn,relu6,maxpool(2),convt(4,2,s=2),silu,upsample(2,mode=bilinear),hardswish,\
         conv(4,3,s=2,p=1),adaptive_avgpool(5),hardsigmoid,stochastic_depth(0.2),flatten,dense(10)",
        // A graph: a residual sum, concatenations (a DenseNet block, stacked in place; U-Net's,
        // copied), a squeeze-and-excitation gate, a transposed convolution, a node read by
        // three others, fused steps.
        "stem = conv(8,3,p=1,bias=false), bn, relu
         body = conv(8,3,p=1,bias=false), bn, relu, conv(8,3,p=1,bias=false), bn
         sum = add(stem, body), relu
         se = adaptive_avgpool(1), conv(2,1), relu, conv(8,1), sigmoid
         gated = mul(se, sum)
         down = conv(8,3,p=1), bn, relu, maxpool(2)
         up = convt(8,2,s=2)
         d1 = cat(stem, gated), bn, relu, conv(4,3,p=1)
         block = cat(stem, gated, d1), bn, relu
         cat(up, gated, stem, block), conv(4,3,p=1), relu, gap, dense(10)",
    ];
    // The counter sees allocations on this thread (that cnnkit's closures on other threads are
    // marked too is tested beside `par::probe`).
    assert_eq!(allocations(|| drop(std::hint::black_box(vec![1u8; 10]))), 1);
    let batch = 16;
    let mut r = cnnkit::rng::Rng::new(1);
    let x: Vec<f32> = (0..batch * 784).map(|_| r.uniform(0.0, 1.0)).collect();
    let labels: Vec<u32> = (0..batch).map(|i| (i % 10) as u32).collect();
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            for arch in archs {
                let model = || cnnkit::Model::from_text([1, 28, 28], arch, 0).unwrap();
                for opt in [
                    "sgd(lr=0.01,momentum=0.9,nesterov=true)",
                    "adam(amsgrad=true)",
                    "rmsprop(centered=true,momentum=0.5)",
                ] {
                    let n = steady_steps(model(), opt, &x, &labels);
                    assert_eq!(
                        n, 0,
                        "{threads} threads, {arch}, {opt}: {n} allocations in 3 steps"
                    );
                }
                // The input gradient (for adversarial examples and saliency): no allocation
                // after its first call either.
                let mut m = model();
                let out = m.output_len();
                let dout = vec![0.1f32; batch * out];
                let mut dx = vec![0.0f32; x.len()];
                for _ in 0..2 {
                    m.forward(&x, batch).unwrap();
                    m.input_gradient(&x, &dout, &mut dx, None).unwrap();
                }
                let n = allocations(|| {
                    for _ in 0..3 {
                        m.forward(&x, batch).unwrap();
                        m.input_gradient(&x, &dout, &mut dx, None).unwrap();
                    }
                });
                assert_eq!(
                    n, 0,
                    "{threads} threads, {arch}: {n} allocations in 3 input gradients"
                );
                // Evaluation-mode passes, kept (forward) and not (infer), for one image and a
                // batch.
                let mut m = model();
                m.eval();
                for n in [1, batch] {
                    m.forward(&x[..n * 784], n).unwrap();
                    m.infer(&x[..n * 784], n).unwrap();
                }
                let n = allocations(|| {
                    for n in [1, batch, 1] {
                        std::hint::black_box(m.forward(&x[..n * 784], n).unwrap());
                        std::hint::black_box(m.infer(&x[..n * 784], n).unwrap());
                    }
                });
                assert_eq!(
                    n, 0,
                    "{threads} threads, {arch}: {n} allocations in 3 inferences"
                );
            }
        });
    }
}

/// With Winograd forced on every 3×3 stride-1 layer, a training step (its forward pass, input
/// gradient and weight gradient) and an inference reuse their buffers too: the transformed
/// weights, the tiles' scratch and the weight gradient's sums.
#[test]
fn winograd_training_and_inference_do_not_allocate() {
    let _conv = CONVOLUTIONS.lock().unwrap_or_else(|e| e.into_inner());
    use cnnkit::kernels::{Winograd, set_winograd};
    let arch = "conv(16,3,p=1,bias=false),bn,relu,conv(24,3,p=1),relu,maxpool(2),\
                conv(16,3,p=2),relu,conv(8,3),relu,gap,dense(10)";
    let batch = 4;
    let mut r = cnnkit::rng::Rng::new(2);
    let x: Vec<f32> = (0..batch * 784).map(|_| r.uniform(0.0, 1.0)).collect();
    let labels: Vec<u32> = (0..batch).map(|i| (i % 10) as u32).collect();
    for mode in [Winograd::F2, Winograd::F4] {
        set_winograd(mode);
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let model = || cnnkit::Model::from_text([1, 28, 28], arch, 0).unwrap();
                let n = steady_steps(model(), "sgd(lr=0.01,momentum=0.9)", &x, &labels);
                assert_eq!(
                    n, 0,
                    "{mode:?}, {threads} threads: {n} allocations in 3 steps"
                );
                let mut m = model();
                m.eval();
                for _ in 0..2 {
                    m.infer(&x, batch).unwrap();
                }
                let n = allocations(|| {
                    std::hint::black_box(m.infer(&x, batch).unwrap());
                });
                assert_eq!(
                    n, 0,
                    "{mode:?}, {threads} threads: {n} allocations in inference"
                );
            });
        }
    }
    set_winograd(Winograd::Auto);
}

#[test]
fn augmentation_does_not_allocate_after_the_first_batch() {
    let a: cnnkit::augment::Augment =
        "flip,vflip,rotate=10,crop=0.8,translate=0.1,brightness,contrast,noise"
            .parse()
            .unwrap();
    let a = cnnkit::augment::Augment {
        normalization: Some(cnnkit::stability::Normalization::new(vec![0.5], vec![0.2]).unwrap()),
        ..a
    };
    let shape = [1, 32, 32];
    let mut x = vec![0.25f32; 8 * 1024];
    let idx: Vec<usize> = (0..8).collect();
    let mut scratch = Vec::new();
    a.apply(shape, &mut x, &idx, 0, &mut scratch).unwrap();
    let n = allocations(|| {
        for epoch in 1..4 {
            a.apply(shape, &mut x, &idx, epoch, &mut scratch).unwrap();
        }
    });
    assert_eq!(n, 0, "{n} allocations in 3 augmented batches");
}
