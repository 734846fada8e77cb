//! Graph models: random graphs against finite differences, fused against separate steps, one
//! thread against two; the text form both ways; joins against what they are made of; a residual
//! graph against the `res` layer; the errors of a bad graph.

use cnnkit::kernels::{Accum, cross_entropy_loss};
use cnnkit::{GraphBuilder, LayerSpec, Model, NodeId, Sequential, TensorData, gradcheck};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

fn spec(s: &str) -> LayerSpec {
    s.parse().unwrap()
}

fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut r = cnnkit::rng::Rng::new(seed);
    (0..len).map(|_| r.uniform(-1.0, 1.0)).collect()
}

/// A random graph over `[2, 8, 8]` inputs from the choices `ops`: layers of every kind (fusable
/// blocks of convolution, batch norm, ReLU and max-pool among them), sums, concatenations (dense
/// blocks among them), gates, upsampling and transposed convolutions, each reading a random earlier node; every node nobody
/// reads goes through `gap, dense(3)` into one final sum.
fn random_graph(ops: &[(u8, u8, u8)]) -> GraphBuilder {
    let mut g = GraphBuilder::new([2, 8, 8]);
    let mut nodes: Vec<NodeId> = vec![g.input()];
    let mut read = vec![true];
    let mut k = 0;
    let mut name = |what: &str| {
        k += 1;
        format!("{what}{k}")
    };
    for &(op, a, b) in ops {
        let pick = |r: u8, nodes: &[NodeId]| nodes[r as usize % nodes.len()];
        let from = pick(a, &nodes);
        let [c, h, w] = g.shape(from).unwrap();
        let spatial = h >= 2 && w >= 2;
        let mut add = |g: &mut GraphBuilder, specs: &[&str], from: NodeId| {
            let specs: Vec<LayerSpec> = specs.iter().map(|s| spec(s)).collect();
            g.chain(&name("n"), &specs, from).unwrap()
        };
        let new = match op % 13 {
            0 => add(&mut g, &["conv(3,3,p=1)"], from),
            1 if spatial => add(&mut g, &["conv(3,3,p=1)", "bn", "relu", "maxpool(2)"], from),
            2 if spatial => add(&mut g, &["bn", "relu", "maxpool(2)"], from),
            3 if spatial => add(&mut g, &["conv(4,3,p=1)", "relu", "maxpool(2)"], from),
            4 if spatial => add(&mut g, &["conv(2,3,p=1)", "bn", "maxpool(2)"], from),
            5 => add(&mut g, &["tanh"], from),
            6 if h <= 4 => add(&mut g, &["convt(2,2,s=2)"], from),
            7 if h <= 4 => add(&mut g, &["upsample(2,mode=bilinear)"], from),
            8 => {
                // A sum with another node of the same shape, or with a convolution of this one.
                let other = pick(b, &nodes);
                if g.shape(other).unwrap() == [c, h, w] && other != from {
                    g.add(&name("sum"), &[from, other]).unwrap()
                } else {
                    let conv = add(&mut g, &[&format!("conv({c},1)")], from);
                    g.add(&name("sum"), &[conv, from]).unwrap()
                }
            }
            9 => {
                // A concatenation with another node of the same size, or with itself.
                let other = pick(b, &nodes);
                let o = g.shape(other).unwrap();
                let second = if o[1..] == [h, w] { other } else { from };
                g.concat(&name("cat"), &[from, second]).unwrap()
            }
            10 => {
                // A squeeze-and-excitation gate.
                let gate = add(
                    &mut g,
                    &["adaptive_avgpool(1)", &format!("conv({c},1)"), "sigmoid"],
                    from,
                );
                if b % 2 == 0 {
                    g.mul(&name("gate"), gate, from).unwrap()
                } else {
                    g.mul(&name("gate"), from, gate).unwrap()
                }
            }
            12 => {
                // A dense block: each layer reads the concatenation of all before it.
                let mut feats = vec![from];
                let block = nodes.len();
                for j in 0..1 + b % 3 {
                    let input = if feats.len() == 1 {
                        feats[0]
                    } else {
                        g.concat(&format!("dense{block}_{j}"), &feats).unwrap()
                    };
                    feats.push(add(&mut g, &["bn", "relu", "conv(2,3,p=1)"], input));
                }
                g.concat(&format!("dense{block}"), &feats).unwrap()
            }
            _ => {
                // An element-wise product with a node of the same shape.
                let t = add(&mut g, &["sigmoid"], from);
                g.mul(&name("mul"), from, t).unwrap()
            }
        };
        // Every node the step read (mark them) and made (the chain's last one is what counts).
        for (i, n) in nodes.iter().enumerate() {
            if *n == from {
                read[i] = true;
            }
        }
        nodes.push(new);
        read.push(false);
    }
    // Intermediate nodes of chains are read by construction; joins read theirs. Dangling nodes
    // are the last of each step that nothing read: each goes through gap, dense(3) into a sum.
    let dangling: Vec<NodeId> = nodes
        .iter()
        .zip(&read)
        .filter(|&(_, &r)| !r)
        .map(|(n, _)| *n)
        .collect();
    let heads: Vec<NodeId> = dangling
        .iter()
        .map(|&d| {
            g.chain(&name("head"), &[spec("gap"), spec("dense(3)")], d)
                .unwrap()
        })
        .collect();
    let heads = if heads.is_empty() {
        vec![
            g.chain(&name("head"), &[spec("gap"), spec("dense(3)")], g.input())
                .unwrap(),
        ]
    } else {
        heads
    };
    if heads.len() > 1 {
        g.add("out", &heads).unwrap();
    }
    g
}

/// Outputs, parameter gradients and input gradient of a cross-entropy pass, as bits.
fn pass_bits(m: &mut Model, x: &[f32], n: usize) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let y = m.forward(x, n).unwrap().to_vec();
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
    let mut d = vec![0.0; y.len()];
    cross_entropy_loss(3, &y, &labels, 0.0, Some(&mut d)).unwrap();
    let mut dx = vec![0.0; x.len()];
    m.input_gradient(x, &d, &mut dx, Some(Accum::Replace))
        .unwrap();
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    (bits(&y), bits(m.grads()), bits(&dx))
}

fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

fn ops() -> impl Strategy<Value = Vec<(u8, u8, u8)>> {
    proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 1..7)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Every parameter gradient and the input gradient of random graphs agree with finite
    /// differences, fused (the default) and separate.
    #[test]
    fn random_graphs_have_the_gradients_of_finite_differences(
        ops in ops(),
        n in 1usize..3,
        fused in any::<bool>(),
        seed in 0..1000u64,
    ) {
        let mut m = random_graph(&ops).build(seed).unwrap();
        m.set_fusion(fused);
        let report = gradcheck::check_model(&mut m, n, seed).unwrap();
        prop_assert!(report.passed(), "{}\n{report}", m.architecture());
        prop_assert!(report.checked > 0);
    }

    /// Fused steps give the separate nodes' outputs bit for bit and their gradients within
    /// rounding (a batch norm fused into a max-pool sums in another order), and the same bits on
    /// one thread and on two.
    #[test]
    fn random_graphs_fused_match_separate_and_any_thread_count(
        ops in ops(),
        n in 1usize..4,
        training in any::<bool>(),
        seed in 0..1000u64,
    ) {
        let x = values(seed, n * 128);
        let run = |fused: bool, threads: usize| {
            on_threads(threads, || {
                let mut m = random_graph(&ops).build(seed).unwrap();
                m.set_fusion(fused);
                if !training {
                    m.eval();
                }
                (pass_bits(&mut m, &x, n), m.fused_layers().len())
            })
        };
        let ((fused, count), (separate, none)) = (run(true, 1), run(false, 1));
        prop_assert_eq!(none, 0);
        prop_assert_eq!(&fused.0, &separate.0, "outputs differ");
        let close = |a: &[u32], b: &[u32]| {
            let f = |v: &[u32]| v.iter().map(|&b| f32::from_bits(b)).collect::<Vec<_>>();
            let (a, b) = (f(a), f(b));
            let tol = 1e-4 * b.iter().fold(0.0f32, |m, v| m.max(v.abs())) + 1e-7;
            a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= tol)
        };
        prop_assert!(close(&fused.1, &separate.1), "parameter gradients differ ({count} fused)");
        prop_assert!(close(&fused.2, &separate.2), "input gradients differ ({count} fused)");
        let (two, _) = run(true, 2);
        prop_assert!(two == fused, "two threads differ from one");
        Ok::<(), TestCaseError>(())?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Concatenations that only batch norms read (the dense blocks among the random graphs)
    /// stacked in place give the copies' outputs, gradients and running statistics bit for bit,
    /// in training and evaluation mode (and inference's outputs), on one thread and on two, in
    /// no more memory and with no more copies.
    #[test]
    fn stacked_concatenations_are_the_copies_bit_for_bit(
        ops in ops(),
        n in 1usize..4,
        training in any::<bool>(),
        fused in any::<bool>(),
        seed in 0..1000u64,
    ) {
        let x = values(seed, n * 128);
        let run = |stack: bool, threads: usize| {
            on_threads(threads, || {
                let mut m = random_graph(&ops).build(seed).unwrap();
                m.set_fusion(fused);
                m.set_stacking(stack);
                if !training {
                    m.eval();
                }
                let bits = pass_bits(&mut m, &x, n);
                let inferred: Vec<u32> = if training {
                    Vec::new()
                } else {
                    m.infer(&x, n).unwrap().iter().map(|f| f.to_bits()).collect()
                };
                let state: Vec<Vec<u32>> = m
                    .state_dict()
                    .iter()
                    .filter_map(|(_, t)| match &t.data {
                        TensorData::F32(v) => Some(v.iter().map(|f| f.to_bits()).collect()),
                        _ => None,
                    })
                    .collect();
                let mem = m.activation_memory(n);
                (bits, state, (mem.training, mem.copied), inferred)
            })
        };
        let (stacked, copied) = (run(true, 1), run(false, 1));
        prop_assert_eq!(&stacked.0, &copied.0, "{}", random_graph(&ops).build(0).unwrap().architecture());
        prop_assert_eq!(&stacked.1, &copied.1, "running statistics differ");
        prop_assert_eq!(&stacked.3, &copied.3, "inference differs");
        prop_assert!(stacked.2.0 <= copied.2.0 && stacked.2.1 <= copied.2.1);
        prop_assert!(run(true, 2).0 == stacked.0, "two threads differ from one");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Inference gives the forward pass's outputs (bit for bit without fusion; with it, within
    /// the rounding of the batch norms folded into convolutions), for one sample
    /// (concatenations in place) and for a batch, and the same bits again after a forward pass
    /// and after itself (its buffer holds other nodes' values by then), in less memory than
    /// training keeps.
    #[test]
    fn inference_is_the_forward_pass_in_less_memory(
        ops in ops(),
        n in 1usize..4,
        fused in any::<bool>(),
        seed in 0..1000u64,
    ) {
        let mut m = random_graph(&ops).build(seed).unwrap();
        m.set_fusion(fused);
        m.eval();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for n in [n, 1] {
            let x = values(seed + n as u64, n * 128);
            let y = m.forward(&x, n).unwrap().to_vec();
            let z = bits(m.infer(&x, n).unwrap());
            if fused {
                let z: Vec<f32> = z.iter().map(|&b| f32::from_bits(b)).collect();
                prop_assert!(close(&z, &y), "{}", m.architecture());
            } else {
                prop_assert_eq!(&z, &bits(&y), "{}", m.architecture());
            }
            let other = values(seed + 7, n * 128);
            m.infer(&other, n).unwrap();
            prop_assert_eq!(&bits(m.infer(&x, n).unwrap()), &z);
            let mem = m.activation_memory(n);
            prop_assert!(mem.inference <= mem.training, "{:?}", mem);
        }
        // A backward pass needs a forward pass, not an inference.
        let x = values(seed, 128);
        let y = m.infer(&x, 1).unwrap().to_vec();
        prop_assert!(m.backward(&x, &vec![0.0; y.len()], Accum::Replace).is_err());
    }
}

/// The text form reads back into the same graph: names, parameters, outputs.
#[test]
fn architecture_text_reads_back_into_the_same_model() {
    for ops in [
        vec![(1, 0, 0), (8, 1, 1), (9, 1, 0), (10, 2, 0), (6, 3, 0)],
        vec![(3, 0, 0), (7, 1, 0), (9, 2, 1), (11, 3, 0), (0, 0, 0)],
    ] {
        let m = random_graph(&ops).build(3).unwrap();
        let text = m.architecture();
        let mut again = Model::from_text([2, 8, 8], &text, 9).unwrap();
        assert_eq!(again.node_names(), m.node_names(), "{text}");
        assert_eq!(again.architecture(), text);
        again.load_state_dict(&m.state_dict()).unwrap();
        let mut m = m;
        let x = values(1, 2 * 128);
        m.eval();
        again.eval();
        assert_eq!(m.forward(&x, 2).unwrap(), again.forward(&x, 2).unwrap());
    }
    // A layer list is the one-statement graph, named as torch.nn.Sequential.
    let list = "conv(4,3,p=1),relu,maxpool(2),gap,dense(3)";
    let a = Model::from_text([1, 8, 8], list, 0).unwrap();
    let b = Sequential::new([1, 8, 8], &LayerSpec::parse_list(list).unwrap(), 0).unwrap();
    assert!(a.is_chain());
    assert_eq!(a.architecture(), list);
    assert_eq!(a.node_names(), ["0", "1", "2", "3", "5"]);
    assert_eq!(a.params(), b.params());
}

/// Statement names, sources, joins and comments in the text form, and the names they give.
#[test]
fn the_text_form_names_nodes_as_pytorch_modules() {
    let text = "
        # a stem, then two branches from it
        stem = conv(4,3,p=1,bias=false), bn, relu
        left = conv(4,3,p=1)
        right = stem: conv(4,1); mid = relu
        both = cat(left, mid), conv(4,1)
        add(both, stem), gap, dense(2)
    ";
    let m = Model::from_text([1, 6, 6], text, 0).unwrap();
    let names: Vec<String> = m.named_parameters().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        [
            "stem.0.weight",
            "stem.1.weight",
            "stem.1.bias",
            "left.weight",
            "left.bias",
            "right.weight",
            "right.bias",
            "both.1.weight",
            "both.1.bias",
            "3.weight",
            "3.bias"
        ]
    );
    assert_eq!(m.output_shape(), [2, 1, 1]);
    assert!(!m.is_chain());
    assert!(
        m.summary().contains("both.0 = cat(left,mid)"),
        "{}",
        m.summary()
    );
}

/// Joins compute what they are made of: a sum of two branches is the sum of the two chains'
/// outputs, a concatenation their channels side by side, a gate a per-channel product.
#[test]
fn joins_compute_sums_concatenations_and_gates_of_their_inputs() {
    let input = [2, 5, 5];
    let x = values(4, 3 * 50);
    let branch = |text: &str| {
        let mut m = Model::from_text(input, text, 7).unwrap();
        m.eval();
        m.forward(&x, 3).unwrap().to_vec()
    };
    let a = branch("conv(3,3,p=1)");
    let b = branch("tanh,conv(3,1)");
    let run = |text: &str| {
        let mut m = Model::from_text(input, text, 7).unwrap();
        // Each branch with the weights it has on its own.
        let mut sd = m.state_dict();
        let one = Model::from_text(input, "conv(3,3,p=1)", 7).unwrap();
        let two = Model::from_text(input, "tanh,conv(3,1)", 7).unwrap();
        for (k, t) in sd.iter_mut() {
            let src = match k.as_str() {
                "a.weight" => one.state_dict()[0].1.clone(),
                "a.bias" => one.state_dict()[1].1.clone(),
                "b.1.weight" => two.state_dict()[0].1.clone(),
                "b.1.bias" => two.state_dict()[1].1.clone(),
                _ => continue,
            };
            *t = src;
        }
        m.load_state_dict(&sd).unwrap();
        m.eval();
        m.forward(&x, 3).unwrap().to_vec()
    };
    let sum = run("a = conv(3,3,p=1); b = input: tanh, conv(3,1); add(a, b)");
    let want: Vec<f32> = a.iter().zip(&b).map(|(p, q)| p + q).collect();
    assert_eq!(sum, want);
    let cat = run("a = conv(3,3,p=1); b = input: tanh, conv(3,1); cat(a, b)");
    for s in 0..3 {
        assert_eq!(&cat[s * 150..s * 150 + 75], &a[s * 75..(s + 1) * 75]);
        assert_eq!(&cat[s * 150 + 75..(s + 1) * 150], &b[s * 75..(s + 1) * 75]);
    }
    let prod = run("a = conv(3,3,p=1); b = input: tanh, conv(3,1); mul(a, b)");
    let want: Vec<f32> = a.iter().zip(&b).map(|(p, q)| p * q).collect();
    assert_eq!(prod, want);
    // The gate: the mean of each channel of b times a.
    let gated = run("a = conv(3,3,p=1); b = input: tanh, conv(3,1); g = gap; mul(a, g)");
    // `gap` flattens to [3, 1, 1]: the gate of each channel.
    for s in 0..3 {
        for ch in 0..3 {
            let plane = &b[s * 75 + ch * 25..s * 75 + (ch + 1) * 25];
            let mean = plane.iter().map(|&v| v as f64).sum::<f64>() / 25.0;
            for p in 0..25 {
                let at = s * 75 + ch * 25 + p;
                let want = a[at] as f64 * mean;
                assert!((gated[at] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()));
            }
        }
    }
}

/// torchvision's BasicBlock as a graph gives the `res` layer's outputs and gradients.
#[test]
fn a_residual_graph_matches_the_residual_layer() {
    let input = [4, 6, 6];
    let graph = "body = conv(4,3,p=1,bias=false), bn, relu, conv(4,3,p=1,bias=false), bn
                 add(input, body), relu, gap, dense(3)";
    let mut g = Model::from_text(input, graph, 1).unwrap();
    let mut r = Model::from_text(input, "res(4),gap,dense(3)", 2).unwrap();
    // The layer's names -> the graph's.
    let rename = |k: &str| {
        for (from, to) in [
            ("0.conv1.", "body.0."),
            ("0.bn1.", "body.1."),
            ("0.conv2.", "body.3."),
            ("0.bn2.", "body.4."),
            ("3.", "4."),
        ] {
            if let Some(rest) = k.strip_prefix(from) {
                return format!("{to}{rest}");
            }
        }
        panic!("unexpected {k}")
    };
    let sd: std::collections::HashMap<_, _> = r
        .state_dict()
        .into_iter()
        .map(|(k, t)| (rename(&k), t))
        .collect();
    g.load_state_dict(&sd).unwrap();
    let x = values(5, 2 * 144);
    let (yg, _, dg) = pass_bits(&mut g, &x, 2);
    let (yr, _, dr) = pass_bits(&mut r, &x, 2);
    let f = |v: &[u32]| v.iter().map(|&b| f32::from_bits(b)).collect::<Vec<_>>();
    let close = |a: &[f32], b: &[f32]| {
        let tol = 1e-5 * b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    };
    assert!(close(&f(&yg), &f(&yr)));
    assert!(close(&f(&dg), &f(&dr)));
    let gr: std::collections::HashMap<String, Vec<f32>> = r
        .named_grads()
        .into_iter()
        .map(|(k, v)| (rename(&k), v.to_vec()))
        .collect();
    for (k, v) in g.named_grads() {
        assert!(close(v, &gr[&k]), "{k}");
    }
}

/// A bad graph is an error naming what is wrong, never a panic.
#[test]
fn bad_graphs_are_errors_naming_the_problem() {
    let input = [2, 8, 8];
    let err = |text: &str| match Model::from_text(input, text, 0) {
        Ok(_) => panic!("{text}: accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err("a = conv(2,3,p=1); add(a, b)").contains("no node named 'b'"));
    assert!(err("a = conv(2,3,p=1); b = maxpool(2); add(a, b)").contains("cannot be added"));
    assert!(err("a = conv(2,3,p=1); b = maxpool(2); cat(a, b)").contains("height or width"));
    assert!(err("a = conv(3,3,p=1); b = input: conv(2,3,p=1); mul(a, b)").contains("gate"));
    assert!(err("a = conv(2,3,p=1); a = relu").contains("two nodes are called 'a'"));
    assert!(err("a = conv(2,3,p=1); b = input: relu; c = a: relu").contains("not used"));
    assert!(err("a = conv(2,3,p=1); add(a)").contains("at least two"));
    assert!(err("a = conv(2,3,p=1); x = a: add(a, a)").contains("SOURCE"));
    assert!(err("input = conv(2,3,p=1)").contains("not a node name"));
    assert!(err("a = conv(2,3,p=1); mul(a, a, a)").contains("two inputs"));
    assert!(err("a b = relu").contains("not a node name"));
    assert!(err("").contains("no layers"));
    assert!(err("a = bogus(3)").contains("statement 1"));
    // A hostile text asking for a huge model is refused before allocating.
    let huge = "a = conv(4096,3,p=1); b = conv(4096,3,p=1); add(a, b)";
    let e = Model::from_text_with_limit(input, huge, 0, 1 << 20).unwrap_err();
    assert!(e.to_string().contains("more than"), "{e}");
    // The builder refuses nodes of another builder.
    let mut g = GraphBuilder::new(input);
    let other = {
        let mut h = GraphBuilder::new(input);
        let x = h.input();
        h.layer("a", &spec("relu"), x).unwrap();
        h.layer("b", &spec("relu"), h.find("a").unwrap()).unwrap()
    };
    assert!(g.layer("c", &spec("relu"), other).is_err());
}

/// A node read by several others gets the sum of their gradients, whatever the order of the
/// readers: `y = a + a` has twice the gradient of `y = a`.
#[test]
fn a_node_read_twice_gets_both_gradients() {
    let input = [1, 4, 4];
    let x = values(2, 2 * 16);
    let grads = |text: &str| {
        let mut m = Model::from_text(input, text, 3).unwrap();
        m.forward(&x, 2).unwrap();
        let dout = values(9, m.output_len() * 2);
        let mut dx = vec![0.0; x.len()];
        m.input_gradient(&x, &dout, &mut dx, Some(Accum::Replace))
            .unwrap();
        (m.grads().to_vec(), dx)
    };
    let (g1, d1) = grads("a = conv(2,3,p=1); b = a: relu; c = a: tanh; add(b, c, a)");
    // The same by hand: d(relu(a) + tanh(a) + a)/da = relu'(a) + tanh'(a) + 1.
    let mut m = Model::from_text(input, "conv(2,3,p=1)", 3).unwrap();
    let a = m.forward(&x, 2).unwrap().to_vec();
    let dout = values(9, a.len());
    let da: Vec<f32> = a
        .iter()
        .zip(&dout)
        .map(|(&v, &g)| {
            let relu = if v > 0.0 { g } else { 0.0 };
            let t = v.tanh();
            relu + g * (1.0 - t * t) + g
        })
        .collect();
    let mut dx = vec![0.0; x.len()];
    m.input_gradient(&x, &da, &mut dx, Some(Accum::Replace))
        .unwrap();
    let close = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + y.abs()))
    };
    assert!(close(&g1, m.grads()));
    assert!(close(&d1, &dx));
}

proptest! {
    /// Any text, however malformed (tokens of the grammar in random order), is a model or an
    /// error: never a panic.
    #[test]
    fn any_text_is_a_model_or_an_error(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("conv(2,3,p=1)"), Just("relu"), Just("bn"), Just("maxpool(2)"), Just("gap"),
                Just("dense(3)"), Just("add(a,b)"), Just("cat(a,input)"), Just("mul(a,b)"),
                Just("mul(a)"), Just("a"), Just("b"), Just("="), Just(":"), Just(","), Just(";"),
                Just("\n"), Just("("), Just(")"), Just("#"), Just("input"), Just("a.0"), Just(" "),
                Just("convt(2,2,s=2)"), Just("upsample(2)"), Just("1"), Just("é"),
            ],
            0..24,
        ),
    ) {
        let text: String = parts.concat();
        if let Ok(mut m) = Model::from_text([2, 4, 4], &text, 0) {
            let x = vec![0.5; 32];
            m.forward(&x, 1).unwrap();
            let again = Model::from_text([2, 4, 4], &m.architecture(), 0).unwrap();
            prop_assert_eq!(again.node_names(), m.node_names());
        }
    }
}

/// `a` within folding's rounding of `b`: `1e-5` of `b`'s largest magnitude (the zoo's measured
/// error is about `1e-7` of it).
fn close(a: &[f32], b: &[f32]) -> bool {
    let tol = 1e-5 * b.iter().fold(0.0f32, |m, v| m.max(v.abs())) + 1e-7;
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

/// Inference folds each batch norm into the convolution before it and takes the shortcut's sum
/// and the activation after it into the same step (and nothing without fusion), and it follows
/// every change of the parameters and running statistics: a parameter written through
/// `params_mut`, running statistics moved by a training-mode pass, a loaded state dict, new
/// weights from `reinit`.
#[test]
fn inference_folds_batch_norms_and_follows_every_change() {
    let text = "stem = conv(8,3,p=1,bias=false), bn, relu
                body = conv(8,3,p=1,bias=false), bn, relu, conv(8,3,p=1), bn
                sum = add(stem, body), relu
                head = gap, dense(3)";
    let build = |seed| {
        GraphBuilder::parse([2, 8, 8], text)
            .unwrap()
            .build(seed)
            .unwrap()
    };
    let mut m = build(3);
    // stem.1, stem.2, body.1, body.2, body.4, the sum and its ReLU.
    assert_eq!(m.inference_fused().len(), 7, "{:?}", m.inference_fused());
    m.set_fusion(false);
    assert!(m.inference_fused().is_empty());
    m.set_fusion(true);
    let (x, xs) = (values(1, 2 * 128), values(2, 4 * 128));
    let check = |m: &mut Model, what: &str| -> Vec<f32> {
        let y = m.forward(&x, 2).unwrap().to_vec();
        let z = m.infer(&x, 2).unwrap().to_vec();
        assert!(close(&z, &y), "{what}: {z:?} against {y:?}");
        z
    };
    m.forward(&xs, 4).unwrap();
    m.eval();
    let before = check(&mut m, "trained statistics");
    m.params_mut()[0] += 0.5;
    let after = check(&mut m, "params_mut");
    assert_ne!(before, after);
    m.train();
    m.forward(&xs, 4).unwrap();
    m.eval();
    let moved = check(&mut m, "a training pass");
    assert_ne!(after, moved);
    let mut other = build(4);
    other.forward(&xs, 4).unwrap();
    m.load_state_dict(&other.state_dict()).unwrap();
    let loaded = check(&mut m, "load_state_dict");
    assert_ne!(moved, loaded);
    m.reinit(cnnkit::Init::TorchDefault, 9);
    let fresh = check(&mut m, "reinit");
    assert_ne!(loaded, fresh);
}
