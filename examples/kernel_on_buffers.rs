//! One kernel on your own buffers: a convolution and a ReLU over plain `f32` slices, with the
//! scratch allocated once and reused, as a program that embeds cnnkit's kernels alone would call
//! them.
//!
//! ```text
//! cargo run --release --example kernel_on_buffers
//! ```

use cnnkit::kernels::activation::{Activation, activation_forward};
use cnnkit::kernels::conv::{conv2d_forward, conv2d_forward_scratch_len};
use cnnkit::{Conv2dGeom, Conv2dParams, Shape4};

fn main() -> cnnkit::Result<()> {
    // 8 RGB images of 32x32, 16 filters of 3x3, padding 1 (torch.nn.Conv2d(3, 16, 3, padding=1)).
    let g = Conv2dGeom::new(
        Shape4::new(8, 3, 32, 32),
        16,
        [3, 3],
        Conv2dParams::default().padding(1),
    )?;
    let x: Vec<f32> = (0..g.x_len()).map(|i| (i % 17) as f32 / 17.0).collect(); // NCHW
    let w = vec![0.01f32; g.w_len()]; // OIHW: [16, 3, 3, 3]
    let b = vec![0.0f32; g.c_out()];
    let mut y = vec![0.0f32; g.y_len()]; // [8, 16, 32, 32]
    let mut ws = vec![0.0f32; conv2d_forward_scratch_len(&g)]; // allocate once, reuse every call
    conv2d_forward(&g, &x, &w, Some(&b), &mut y, &mut ws)?;

    let mut z = vec![0.0f32; y.len()];
    activation_forward(Activation::Relu, &y, &mut z)?;
    // A wrong length is an error, not a panic.
    assert!(conv2d_forward(&g, &x[1..], &w, Some(&b), &mut y, &mut ws).is_err());
    println!(
        "conv 3x3 + ReLU on {} values: mean output {:.4}",
        x.len(),
        z.iter().sum::<f32>() / z.len() as f32
    );
    Ok(())
}
