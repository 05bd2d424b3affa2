//! Every element type beyond the common ones — float16, bfloat16, int16, uint16, uint32,
//! uint64 — through real ONNX Runtime kernels (`testdata/dtypes.onnx`: Cast + Mul for
//! float16, Identity for the rest), one request at a time and batched by the dynamic batcher,
//! with exact expected outputs.

mod common;

use common::{load, runtime, sha256_of, testdata};
use half::{bf16, f16};
use kiln::{BatchConfig, Checksum, ElementType, ModelHandle, ModelOptions, NamedTensors, Tensor};

/// One request of `rows` rows, its values depending on `seed`.
fn request(rows: usize, seed: u16) -> NamedTensors {
    let n = |k: usize| -> Vec<u16> { (0..rows * k).map(|i| seed * 10 + i as u16).collect() };
    vec![
        (
            "h".into(),
            Tensor::new(
                [rows, 4],
                n(4).iter()
                    .map(|&v| f16::from_f32(f32::from(v) * 0.5))
                    .collect::<Vec<_>>(),
            )
            .expect("h"),
        ),
        (
            "bf".into(),
            Tensor::new(
                [rows, 2],
                n(2).iter()
                    .map(|&v| bf16::from_f32(-f32::from(v)))
                    .collect::<Vec<_>>(),
            )
            .expect("bf"),
        ),
        (
            "i16".into(),
            Tensor::new(
                [rows, 2],
                n(2).iter().map(|&v| -(v as i16)).collect::<Vec<_>>(),
            )
            .expect("i16"),
        ),
        ("u16".into(), Tensor::new([rows, 2], n(2)).expect("u16")),
        (
            "u32".into(),
            Tensor::new(
                [rows, 2],
                n(2).iter().map(|&v| u32::from(v) << 16).collect::<Vec<_>>(),
            )
            .expect("u32"),
        ),
        (
            "u64".into(),
            Tensor::new(
                [rows, 2],
                n(2).iter().map(|&v| u64::from(v) << 40).collect::<Vec<_>>(),
            )
            .expect("u64"),
        ),
    ]
}

/// What the model must answer: `2 * h` (exact in float16 for these values) and the rest
/// unchanged.
fn check(inputs: &NamedTensors, outputs: &NamedTensors) {
    let out = |name: &str| {
        &outputs
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("output {name}"))
            .1
    };
    let h = inputs[0].1.as_slice::<f16>().expect("h");
    let doubled: Vec<f16> = h.iter().map(|x| f16::from_f32(x.to_f32() * 2.0)).collect();
    assert_eq!(out("y16").as_slice::<f16>().expect("y16"), &doubled[..]);
    assert_eq!(out("y16").element_type(), ElementType::F16);
    for (name, input) in &inputs[1..] {
        assert_eq!(out(&format!("out_{name}")), input, "{name}");
    }
}

#[test]
fn the_signature_reports_every_type() {
    let model = load("dtypes.onnx", ModelOptions::new());
    let types: Vec<ElementType> = model
        .metadata()
        .inputs
        .iter()
        .map(|t| t.element_type)
        .collect();
    assert_eq!(
        types,
        [
            ElementType::F16,
            ElementType::Bf16,
            ElementType::I16,
            ElementType::U16,
            ElementType::U32,
            ElementType::U64
        ]
    );
}

#[test]
fn one_request_at_a_time() {
    let mut model = load("dtypes.onnx", ModelOptions::new());
    for (rows, seed) in [(1, 1), (3, 2)] {
        let inputs = request(rows, seed);
        let outputs = model.run(&inputs).expect("runs");
        check(&inputs, &outputs);
    }
}

#[test]
fn batched_requests_are_split_back_exactly() {
    let file = "dtypes.onnx";
    let handle = ModelHandle::new("dtypes", opentelemetry::global::meter("kiln-tests"));
    let options = ModelOptions::new().with_checksum(Checksum::Sha256(sha256_of(&testdata(file))));
    let config = BatchConfig {
        instances: 1,
        max_batch_size: 16,
        max_queue_delay_us: 20_000,
        ..BatchConfig::default()
    };
    handle
        .load_model(&runtime(), testdata(file), "1", &options, &config)
        .expect("serves");
    let requests: Vec<NamedTensors> = (0..8).map(|i| request(1 + i % 3, i as u16)).collect();
    std::thread::scope(|s| {
        let answers: Vec<_> = requests
            .iter()
            .map(|r| {
                let handle = handle.clone();
                s.spawn(move || handle.infer_blocking(kiln::InferRequest::new(r.clone())))
            })
            .collect();
        for (r, a) in requests.iter().zip(answers) {
            let outputs = a.join().expect("thread").expect("answered");
            check(r, &outputs);
        }
    });
    let stats = handle.stats().expect("stats");
    assert!(stats.batches < 8, "the requests were batched: {stats:?}");
}
