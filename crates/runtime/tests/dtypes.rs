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

/// `file` served by a batcher (one instance, batches of up to 16 within 20 ms).
fn batched(file: &str, name: &str) -> ModelHandle {
    batched_with(
        file,
        name,
        &BatchConfig {
            max_queue_delay_us: 20_000,
            ..batch16()
        },
    )
}

/// One instance, batches of up to 16.
fn batch16() -> BatchConfig {
    BatchConfig {
        instances: 1,
        max_batch_size: 16,
        ..BatchConfig::default()
    }
}

/// `file` served by a batcher set up as `config` says.
fn batched_with(file: &str, name: &str, config: &BatchConfig) -> ModelHandle {
    let handle = ModelHandle::new(name, opentelemetry::global::meter("kiln-tests"));
    let options = ModelOptions::new().with_checksum(Checksum::Sha256(sha256_of(&testdata(file))));
    handle
        .load_model(&runtime(), testdata(file), "1", &options, config)
        .expect("serves (warm-up with invented inputs included)");
    handle
}

/// Sends `requests` at once from a thread each, checks every answer against its request with
/// `check`, and that the batcher ran them in fewer batches than requests.
fn send_together(
    handle: &ModelHandle,
    requests: &[NamedTensors],
    check: fn(&NamedTensors, &NamedTensors),
) {
    std::thread::scope(|s| {
        let answers: Vec<_> = requests
            .iter()
            .map(|r| {
                let handle = handle.clone();
                s.spawn(move || handle.infer_blocking(kiln::InferRequest::new(r.clone())))
            })
            .collect();
        for (r, a) in requests.iter().zip(answers) {
            check(r, &a.join().expect("thread").expect("answered"));
        }
    });
    let stats = handle.stats().expect("stats");
    assert!(
        stats.batches < requests.len() as u64,
        "the requests were batched: {stats:?}"
    );
}

#[test]
fn batched_requests_are_split_back_exactly() {
    let handle = batched("dtypes.onnx", "dtypes");
    let requests: Vec<NamedTensors> = (0..8).map(|i| request(1 + i % 3, i as u16)).collect();
    send_together(&handle, &requests, check);
}

/// A `strings.onnx` request of `rows` rows: `text` [rows, 3] and `n` [rows, 1].
fn strings_request(rows: usize, seed: usize) -> NamedTensors {
    let words = ["cat", "dog", "ünïcödé", "", "other words", "猫"];
    let text: Vec<String> = (0..rows * 3)
        .map(|i| words[(i + seed) % words.len()].to_owned())
        .collect();
    let n: Vec<i64> = (0..rows).map(|i| ((i + seed) % 3) as i64).collect();
    vec![
        ("text".into(), Tensor::new([rows, 3], text).expect("text")),
        ("n".into(), Tensor::new([rows, 1], n).expect("n")),
    ]
}

/// What `strings.onnx` must answer: `echo` = text, `ids` its LabelEncoder codes, `label` the
/// names of `n`.
fn check_strings(inputs: &NamedTensors, outputs: &NamedTensors) {
    let out = |name: &str| &outputs.iter().find(|(n, _)| n == name).expect(name).1;
    let text = inputs[0].1.as_slice::<String>().expect("text");
    assert_eq!(out("echo"), &inputs[0].1);
    assert_eq!(out("echo").element_type(), ElementType::String);
    let ids: Vec<i64> = text
        .iter()
        .map(|t| match t.as_str() {
            "cat" => 1,
            "dog" => 2,
            "ünïcödé" => 3,
            _ => -1,
        })
        .collect();
    assert_eq!(out("ids").as_slice::<i64>().expect("ids"), &ids[..]);
    let labels: Vec<&str> = inputs[1]
        .1
        .as_slice::<i64>()
        .expect("n")
        .iter()
        .map(|n| match n {
            1 => "one",
            2 => "two",
            _ => "other",
        })
        .collect();
    assert_eq!(
        out("label").as_slice::<String>().expect("label"),
        &labels[..]
    );
    assert_eq!(out("label").shape(), inputs[1].1.shape());
}

#[test]
fn string_tensors_in_and_out_one_at_a_time_and_batched() {
    let mut model = load("strings.onnx", ModelOptions::new());
    assert_eq!(model.metadata().inputs[0].element_type, ElementType::String);
    let inputs = strings_request(2, 0);
    check_strings(&inputs, &model.run(&inputs).expect("runs"));

    let handle = batched("strings.onnx", "strings");
    let requests: Vec<NamedTensors> = (0..8).map(|i| strings_request(1 + i % 3, i)).collect();
    send_together(&handle, &requests, check_strings);
}

#[test]
fn strings_ort_cannot_hold_are_refused_when_the_tensor_is_made() {
    let e = Tensor::new([1], vec!["a\0b".to_owned()]).expect_err("NUL");
    assert!(
        matches!(e, kiln::Error::TensorString { index: 0, .. }),
        "{e}"
    );
    let bytes = Tensor::new([2], vec!["é".to_owned(), String::new()])
        .expect("strings")
        .to_le_bytes();
    assert_eq!(bytes, [2, 0, 0, 0, 0xc3, 0xa9, 0, 0, 0, 0]);
    let back = Tensor::from_le_bytes(ElementType::String, vec![2], &bytes).expect("back");
    assert_eq!(back.as_slice::<String>().expect("strings"), &["é", ""]);
    let e = Tensor::from_le_bytes(ElementType::String, vec![1], &[1, 0, 0, 0, 0xff])
        .expect_err("not UTF-8");
    assert!(
        matches!(e, kiln::Error::TensorString { index: 0, .. }),
        "{e}"
    );
}

#[test]
fn queued_strings_count_what_they_hold_in_memory_not_their_wire_size() {
    // 48 "cat"s and 16 int64s: 464 bytes as the binary extension sends them (4 + 3 a
    // string), but 48 × (a 24-byte `String` + its heap block) in the queue, over a 1 KiB
    // limit: `max_queue_bytes` bounds the memory the queue holds.
    let config = BatchConfig {
        max_queue_bytes: 1024,
        ..batch16()
    };
    let handle = batched_with("strings.onnx", "strings", &config);
    let text = Tensor::new([16, 3], vec!["cat".to_owned(); 48]).expect("text");
    let n = Tensor::new([16, 1], vec![1i64; 16]).expect("n");
    assert_eq!(text.byte_len() + n.byte_len(), 464);
    let inputs: NamedTensors = vec![("text".into(), text), ("n".into(), n)];
    let e = handle
        .infer_blocking(kiln::InferRequest::new(inputs))
        .expect_err("over max_queue_bytes");
    assert!(
        matches!(e, kiln::Error::RequestTooLarge { bytes, limit: 1024, .. } if bytes > 48 * 24),
        "{e}"
    );
    // The same request with one row fits and is answered.
    let one = strings_request(1, 0);
    check_strings(
        &one,
        &handle
            .infer_blocking(kiln::InferRequest::new(one.clone()))
            .expect("fits"),
    );
}
