#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cnnkit_fuzz::onnx(data));
