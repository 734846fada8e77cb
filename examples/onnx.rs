//! Reads an ONNX model (`torch.onnx.export`'s, or any within cnnkit's operators), prints its
//! layers, runs one input through it, and writes it back as ONNX beside the original.
//!
//! ```sh
//! cargo run --release --example onnx -- model.onnx        # also writes model.cnnkit.onnx
//! cargo run --release --example onnx                      # a small network made here
//! ```

use cnnkit::onnx::{self, ExportOptions, ImportOptions};
use cnnkit::{LayerSpec, Sequential};
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = match std::env::args().nth(1) {
        Some(p) => PathBuf::from(p),
        None => {
            // No file given: export a small network, then read that.
            let specs = LayerSpec::parse_list("conv(8,3,p=1),bn,relu,maxpool(2),flatten,dense(3)")?;
            let mut m = Sequential::new([1, 16, 16], &specs, 0)?;
            m.eval();
            let p = std::env::temp_dir().join("cnnkit-example.onnx");
            m.save_onnx(&p)?;
            p
        }
    };
    let imported = onnx::read(&path, &ImportOptions::default())?;
    let mut model = imported.model;
    println!(
        "{}: input {} {:?}, output {} {:?}",
        path.display(),
        imported.input_name,
        model.input_shape(),
        imported.output_name,
        model.output_shape()
    );
    println!("{}", model.summary());
    for (k, v) in &imported.metadata {
        println!("metadata {k}: {v}");
    }
    let x = vec![0.5; model.input_shape().iter().product()];
    let y = model.infer(&x, 1)?;
    println!(
        "output for a constant 0.5 image: {:?}",
        &y[..y.len().min(10)]
    );
    let out = path.with_extension("cnnkit.onnx");
    onnx::save(
        &model,
        &out,
        &ExportOptions {
            metadata: imported.metadata,
            ..Default::default()
        },
    )?;
    println!("wrote {}", out.display());
    Ok(())
}
