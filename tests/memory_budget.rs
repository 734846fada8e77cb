//! The memory budget: requests sized by user input are refused with an error naming what was
//! asked and the budget, before anything is allocated; a request within the budget that the
//! system refuses is an error too, not an abort. (One test: the budget is process-wide.)

use cnnkit::image::{ImageOptions, load_image_folder};
use cnnkit::optim::{Optimizer, OptimizerKind};
use cnnkit::preprocess::{Filter, Gray, resize};
use cnnkit::{Error, LayerSpec, Sequential, memory};

fn over_budget<T: std::fmt::Debug>(r: cnnkit::Result<T>, what: &str) -> String {
    match r {
        Err(e @ Error::OverBudget { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(what), "{msg}");
            assert!(msg.contains("memory budget of"), "{msg}");
            msg
        }
        other => panic!("expected OverBudget for {what}, got {other:?}"),
    }
}

#[test]
fn requests_beyond_the_budget_are_errors_not_aborts() {
    // A budget of 64 MB for this process.
    memory::set_memory_budget(64_000_000);
    assert_eq!(memory::memory_budget(), 64_000_000);

    // 10 x 16M parameters and their gradients: 1.3 GB.
    let dense = LayerSpec::parse_list("flatten,dense(10)").unwrap();
    let msg = over_budget(Sequential::new([1, 4096, 4096], &dense, 0), "parameters");
    assert!(msg.contains("1.3 GB") && msg.contains("64.0 MB"), "{msg}");

    // A model that fits, and a batch whose activations do not: refused before allocating, and
    // the model still works for a batch that fits.
    let specs = LayerSpec::parse_list("conv(8,3,p=1),relu,flatten,dense(2)").unwrap();
    let mut m = Sequential::new([1, 64, 64], &specs, 0).unwrap();
    let x = vec![0.5f32; 1000 * 64 * 64];
    over_budget(m.forward(&x, 1000), "activations of the batch");
    assert_eq!(m.forward(&x[..2 * 64 * 64], 2).unwrap().len(), 4);

    // Optimizer state (Adam's two slots of 10M values: 80 MB).
    over_budget(
        Optimizer::new(OptimizerKind::Adam(Default::default()), 10_000_000),
        "optimizer state",
    );

    // Resizing to 100000 x 100000 (the report's --size): 40 GB.
    let img = Gray::new(4, 4, vec![0.5f32; 16]).unwrap();
    over_budget(
        resize(&img, 100_000, 100_000, Filter::Bilinear),
        "resized image",
    );

    // An image folder at a size whose data set cannot fit: refused before decoding.
    let dir = std::env::temp_dir().join(format!("cnnkit-budget-{}", std::process::id()));
    for class in ["a", "b"] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        image::GrayImage::from_pixel(4, 4, image::Luma([9]))
            .save(dir.join(class).join("0.png"))
            .unwrap();
    }
    let opts = ImageOptions {
        size: Some([20_000, 20_000]),
        ..Default::default()
    };
    over_budget(load_image_folder(&dir, &opts), "data set");
    let small = ImageOptions {
        size: Some([8, 8]),
        ..Default::default()
    };
    assert_eq!(load_image_folder(&dir, &small).unwrap().len(), 2);
    let _ = std::fs::remove_dir_all(&dir);

    // Within an unlimited budget, a request the system cannot satisfy (2^48 pixels: 1 PB) is
    // an error, not an abort.
    memory::set_memory_budget(usize::MAX);
    match resize(&img, 1 << 24, 1 << 24, Filter::Bilinear) {
        Err(e @ Error::OutOfMemory { .. }) => {
            assert!(e.to_string().contains("the system refused"), "{e}")
        }
        other => panic!("expected OutOfMemory, got {:?}", other.map(|g| g.width())),
    }
    memory::set_memory_budget(memory::default_memory_budget());
}
