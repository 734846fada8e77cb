//! The public `Layer` trait: a layer written outside the crate works in a model (training,
//! state dict, zero allocation is its own business), and the public gradient check tells a right
//! backward pass from a wrong one. Residual blocks through the same check.

#[path = "../examples/custom_layer.rs"]
mod example;

use cnnkit::layer::{self, Backward, Ctx, Layer, Shape3};
use cnnkit::{LayerSpec, Result, Sequential, gradcheck};
use example::LearnedSwish;

/// The example layer with its input gradient off by 10 % (a typical slip).
#[derive(Debug)]
struct Wrong(LearnedSwish);

impl Layer for Wrong {
    fn spec(&self) -> LayerSpec {
        LayerSpec::custom("wrong")
    }
    fn out_shape(&self) -> Shape3 {
        self.0.out_shape()
    }
    fn params(&self) -> Vec<layer::ParamInfo> {
        self.0.params()
    }
    fn forward(
        &mut self,
        n: usize,
        p: &[f32],
        x: &[f32],
        y: &mut [f32],
        ctx: &mut Ctx<'_>,
    ) -> Result<()> {
        self.0.forward(n, p, x, y, ctx)
    }
    fn backward(&mut self, b: Backward<'_>, ctx: &mut Ctx<'_>) -> Result<()> {
        let Backward {
            n,
            params,
            grads,
            x,
            y,
            dy,
            mut dx,
            accum,
        } = b;
        let dx2 = dx.as_deref_mut();
        let inner = Backward {
            n,
            params,
            grads,
            x,
            y,
            dy,
            dx: dx2,
            accum,
        };
        self.0.backward(inner, ctx)?;
        if let Some(dx) = dx {
            dx.iter_mut().for_each(|v| *v *= 1.1);
        }
        Ok(())
    }
}

#[test]
fn the_gradient_check_passes_a_right_layer_and_names_a_wrong_one() {
    let shape = [3, 4, 5];
    let good = gradcheck::check_layer(Box::new(LearnedSwish::new(shape)), shape, 2, 3).unwrap();
    assert!(good.passed(), "{good}");
    assert!(
        good.checked >= 50 && good.skipped * 10 <= good.checked,
        "{good}"
    );
    let bad =
        gradcheck::check_layer(Box::new(Wrong(LearnedSwish::new(shape))), shape, 2, 3).unwrap();
    assert!(!bad.passed());
    assert!(
        bad.mismatches.iter().all(|m| m.what == "input"),
        "only the input gradient is wrong: {bad}"
    );
    assert!(bad.to_string().contains("input["), "{bad}");
}

#[test]
fn cnnkit_layers_pass_the_public_check() {
    for (spec, input) in [
        ("conv(3,3,s=2,p=1)", [2, 5, 6]),
        ("bn", [3, 4, 4]),
        ("res(3)", [3, 5, 5]),
        ("res(4,s=2)", [2, 6, 6]),
        ("res(4)", [2, 5, 5]),
        ("dense(4)", [6, 1, 1]),
        ("gelu", [2, 3, 3]),
        ("relu6", [2, 3, 3]),
        ("hardsigmoid", [2, 3, 3]),
        ("hardswish", [2, 3, 3]),
        ("silu", [2, 3, 3]),
        ("softmax", [3, 2, 2]),
        ("softmax", [4, 1, 1]),
        ("adaptive_avgpool(2x3)", [2, 5, 4]),
        ("upsample(2x3)", [2, 3, 2]),
        ("stochastic_depth(0.3)", [2, 2, 2]),
        ("convt(3,3,s=2,p=1,op=1)", [2, 3, 3]),
        ("convt(4,2x3,s=2x1,d=2,g=2,bias=false)", [2, 2, 3]),
        ("upsample(2,mode=bilinear)", [2, 3, 3]),
        ("upsample(3,mode=bilinear,align_corners=true)", [1, 2, 3]),
    ] {
        let s: LayerSpec = spec.parse().unwrap();
        let l = layer::build(&s, input).unwrap();
        let r = gradcheck::check_layer(l, input, 3, 11).unwrap();
        assert!(r.passed(), "{spec}: {r}");
        assert!(r.checked > r.skipped, "{spec}: {r}");
    }
}

#[test]
fn a_model_with_an_own_layer_trains_and_names_its_parameters() {
    let (train, _) = cnnkit::data::digits().unwrap();
    let mut m = example::model(0).unwrap();
    assert!(m.summary().contains("learned_swish"), "{}", m.summary());
    let names: Vec<String> = m.state_dict().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["0.weight", "0.bias", "1.beta", "4.weight", "4.bias"]
    );
    // β starts at its declared constant.
    assert_eq!(&m.params()[80..88], &[1.0; 8]);
    // A few Adam steps on one batch lower the loss and move β.
    let idx: Vec<usize> = (0..64).collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    cnnkit::data::gather(&train, &idx, &mut x, &mut y);
    let cfg = cnnkit::TrainConfig::default();
    let mut t = cnnkit::Trainer::new(m, "adam(lr=0.01)".parse().unwrap(), cfg).unwrap();
    let first = t.step(&x, &y).unwrap().0;
    let mut last = first;
    for _ in 0..30 {
        last = t.step(&x, &y).unwrap().0;
    }
    assert!(last < 0.5 * first, "loss {first} -> {last}");
    m = t.into_model();
    assert!(m.params()[80..88].iter().any(|&b| b != 1.0));
    // Loading its state dict into a freshly built copy gives the same outputs.
    let mut copy = example::model(5).unwrap();
    let sd = m.state_dict();
    copy.load_state_dict(&sd).unwrap();
    m.eval();
    copy.eval();
    let a = m.forward(&x, 64).unwrap().to_vec();
    assert_eq!(a, copy.forward(&x, 64).unwrap());
}

#[test]
fn custom_layers_cannot_be_built_from_text_and_say_why() {
    let e = Sequential::new([1, 4, 4], &[LayerSpec::custom("mine")], 0).unwrap_err();
    assert!(e.to_string().contains("from_layers"), "{e}");
    let e = Sequential::from_layers([1, 4, 4], vec![], 0).unwrap_err();
    assert!(e.to_string().contains("no layers"), "{e}");
}
