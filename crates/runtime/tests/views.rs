//! Inputs borrowed from the caller (`TensorView`), on the real ONNX Runtime: `Model::run_views`
//! hands a view to ONNX Runtime with no copy, `ModelHandle::infer_view_blocking` copies it at
//! most once (into the batch buffer; not at all for a batch of one), measured with a counting
//! allocator; batched borrowed requests answer exactly as one-at-a-time owned ones, and a
//! borrowed request past its deadline returns.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{load, runtime, sha256_of, testdata};
use kiln::batch::{Backend, BatcherSpec};
use kiln::ndarray::Array2;
use kiln::{
    BatchConfig, Checksum, ErrorKind, ModelHandle, ModelOptions, NamedTensors, Tensor, TensorView,
    ViewRequest,
};

/// Counts every byte the Rust allocator hands out (ONNX Runtime's own C++ allocations are not
/// counted: they are not copies of the input).
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size.saturating_sub(layout.size()), Ordering::Relaxed);
        // SAFETY: forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// The tests of this file run one at a time: allocations are counted process-wide.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn allocated_by<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = ALLOCATED.load(Ordering::SeqCst);
    let r = f();
    (r, ALLOCATED.load(Ordering::SeqCst) - before)
}

fn serve(config: BatchConfig) -> ModelHandle {
    let handle = ModelHandle::new("mlp", kiln::otel::global::meter("kiln-tests"));
    let options =
        ModelOptions::new().with_checksum(Checksum::Sha256(sha256_of(&testdata("mlp.onnx"))));
    handle
        .load_model(&runtime(), testdata("mlp.onnx"), "1", &options, &config)
        .expect("serves");
    handle
}

fn input(rows: usize, seed: usize) -> Array2<f32> {
    Array2::from_shape_fn((rows, 16), |(r, c)| {
        ((r * 16 + c + seed) % 97) as f32 / 97.0 - 0.5
    })
}

fn named(view: TensorView<'_>) -> Vec<(String, TensorView<'_>)> {
    vec![("x".to_owned(), view)]
}

#[test]
fn views_reach_onnx_runtime_with_no_copy_and_the_batch_buffer_with_at_most_one() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // mlp: `x` f32 [batch, 16] -> `y` f32 [batch, 4]: outputs are a quarter of the input.
    let rows = 200_000;
    let x = input(rows, 0);
    let input_bytes = rows * 16 * 4;
    let mut model = load("mlp.onnx", ModelOptions::new());
    let owned = model
        .run(&[("x".into(), Tensor::from(x.clone()))])
        .expect("owned run");

    let (viewed, used) = allocated_by(|| model.run_views(&named(TensorView::from(x.view()))));
    eprintln!("run_views: {used} bytes allocated for a {input_bytes}-byte input");
    assert_eq!(viewed.expect("view run"), owned);
    assert!(
        used < input_bytes / 2,
        "run_views allocated {used} bytes for a {input_bytes}-byte input: it was copied"
    );
    // The copying way, for the record: the view becomes a tensor of its own first.
    let (_, copying) = allocated_by(|| model.run(&[("x".into(), Tensor::from_view(x.view()))]));
    eprintln!("run(Tensor::from_view): {copying} bytes allocated");
    assert!(copying >= input_bytes, "{copying}");

    // Room for two requests in one batch, and time for the second to join the first.
    let handle = serve(BatchConfig {
        max_batch_size: rows * 2,
        max_queue_delay_us: 300_000,
        ..BatchConfig::default()
    });
    let request = || ViewRequest::new(named(TensorView::from(x.view())));
    // A lone request runs on the caller's memory itself: not copied into a tensor of its own
    // (a lone request is never stacked).
    let (first, used) = allocated_by(|| handle.infer_view_blocking(request()));
    eprintln!("infer_view_blocking, alone: {used} bytes allocated");
    assert_eq!(first.expect("batched view"), owned);
    assert!(
        used < input_bytes / 2,
        "a batch of one borrowed view allocated {used} bytes for a {input_bytes}-byte input"
    );
    // The copying way, for the record: the view becomes a tensor of its own first.
    let (_, copying) = allocated_by(|| {
        handle.infer_blocking(kiln::InferRequest::new(vec![(
            "x".into(),
            Tensor::from_view(x.view()),
        )]))
    });
    eprintln!("infer_blocking(Tensor::from_view), alone: {copying} bytes allocated");
    assert!(copying >= input_bytes, "{copying}");
    // Two at once share a batch: one copy each, into the batch buffer, and no more.
    let y = input(rows / 2, 7);
    let batches_before = handle.stats().expect("stats").batches;
    let (both, used) = allocated_by(|| {
        std::thread::scope(|s| {
            let a = s.spawn(|| {
                handle.infer_view_blocking(ViewRequest::new(named(TensorView::from(x.view()))))
            });
            let b = s.spawn(|| {
                handle.infer_view_blocking(ViewRequest::new(named(TensorView::from(y.view()))))
            });
            (a.join().expect("a"), b.join().expect("b"))
        })
    });
    assert_eq!(both.0.expect("a"), owned);
    assert_eq!(
        both.1.expect("b"),
        model
            .run(&[("x".into(), Tensor::from(y.clone()))])
            .expect("y")
    );
    assert_eq!(
        handle.stats().expect("stats").batches - batches_before,
        1,
        "the two requests did not share a batch"
    );
    // One copy of each input into the batch buffer (1×), the batch's outputs and their split
    // back per request (a quarter each: 0.5×): 1.5×. A second copy of the inputs would be 2.5×.
    let both_bytes = input_bytes + input_bytes / 2;
    eprintln!("infer_view_blocking, two in one batch: {used} bytes allocated for {both_bytes} bytes of input");
    assert!(
        used < 2 * both_bytes,
        "two borrowed requests allocated {used} bytes for {both_bytes} bytes of input: more than one copy"
    );
    handle.shutdown();
}

#[test]
fn borrowed_requests_from_many_threads_answer_as_owned_ones_alone() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let handle = serve(BatchConfig {
        max_batch_size: 32,
        max_queue_delay_us: 2_000,
        ..BatchConfig::default()
    });
    let mut model = load("mlp.onnx", ModelOptions::new());
    let inputs: Vec<Array2<f32>> = (0..64).map(|i| input(1 + i % 3, i)).collect();
    let expected: Vec<_> = inputs
        .iter()
        .map(|x| {
            model
                .run(&[("x".into(), Tensor::from(x.clone()))])
                .expect("alone")
        })
        .collect();
    std::thread::scope(|s| {
        for t in 0..8 {
            let (handle, inputs, expected) = (&handle, &inputs, &expected);
            s.spawn(move || {
                for i in (t..64).step_by(8) {
                    let got = handle
                        .infer_view_blocking(ViewRequest::new(named(TensorView::from(
                            inputs[i].view(),
                        ))))
                        .expect("borrowed");
                    assert_eq!(got, expected[i], "request {i}");
                }
            });
        }
    });
    // A transposed view (not in standard layout) is copied once and answers the same.
    let base = input(16, 3);
    let transposed = base.t();
    assert!(!transposed.is_standard_layout());
    let got = handle
        .infer_view_blocking(ViewRequest::new(named(TensorView::from(transposed))))
        .expect("strided");
    let want = model
        .run(&[("x".into(), Tensor::from(transposed.to_owned()))])
        .expect("alone");
    assert_eq!(got, want);

    // Past its deadline (the queue waits 10 s for company), a borrowed request returns.
    let slow = serve(BatchConfig {
        max_batch_size: 32,
        max_queue_delay_us: 10_000_000,
        ..BatchConfig::default()
    });
    let x = input(1, 0);
    let started = Instant::now();
    let err = slow
        .infer_view_blocking(
            ViewRequest::new(named(TensorView::from(x.view())))
                .with_timeout(Duration::from_millis(50)),
        )
        .expect_err("past its deadline");
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    slow.shutdown();
    handle.shutdown();
}

/// A backend that answers with its input (an echo), optionally keeping a clone of it that
/// another thread drops later.
struct Echo {
    keep: Option<std::sync::mpsc::Sender<NamedTensors>>,
}

impl Backend for Echo {
    fn run(&mut self, inputs: &NamedTensors) -> kiln::Result<NamedTensors> {
        if let Some(keep) = &self.keep {
            let _ = keep.send(inputs.clone());
        }
        Ok(inputs.clone())
    }
}

fn echo(keep: Option<std::sync::mpsc::Sender<NamedTensors>>) -> ModelHandle {
    let metadata = load("mlp.onnx", ModelOptions::new()).metadata().clone();
    let handle = ModelHandle::new("echo", kiln::otel::global::meter("kiln-tests"));
    let config = BatchConfig {
        warmup: false,
        max_queue_delay_us: 0,
        ..BatchConfig::default()
    };
    let spec = BatcherSpec {
        model: "echo".into(),
        version: "1".into(),
        metadata,
        max_input_elements: 1 << 20,
        config,
    };
    let backends: Vec<Box<dyn Backend>> = vec![Box::new(Echo { keep })];
    handle
        .load_with("1", move || Ok((spec, backends, "echo".into())))
        .expect("serves");
    handle
}

#[test]
fn an_answer_that_is_the_borrowed_input_is_copied_and_a_kept_clone_is_waited_for() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let x = input(2, 5);
    // An echo: the answer is the caller's memory. It must come back (copied), not hang (the
    // call runs on a thread of its own, so a hang fails this test instead of stalling it).
    let handle = echo(None);
    let (done, answered) = std::sync::mpsc::channel();
    {
        let (handle, x) = (handle.clone(), x.clone());
        std::thread::spawn(move || {
            let out = handle
                .infer_view_blocking(ViewRequest::new(named(TensorView::from(x.view()))))
                .map(|out| (out, x.as_ptr() as usize));
            let _ = done.send(out);
        });
    }
    let (out, caller) = answered
        .recv_timeout(Duration::from_secs(10))
        .expect("an echoed borrowed input hung the call")
        .expect("echo");
    let echoed = out[0].1.as_slice::<f32>().expect("f32");
    assert_eq!(echoed, x.as_slice().expect("standard"));
    assert_ne!(
        echoed.as_ptr() as usize,
        caller,
        "the answer still points at the caller's memory"
    );
    handle.shutdown();

    // A backend that keeps a clone: the call returns only once the clone is dropped.
    let (keep, kept) = std::sync::mpsc::channel();
    let handle = echo(Some(keep));
    let hold = Duration::from_millis(300);
    std::thread::scope(|s| {
        s.spawn(move || {
            let clone = kept.recv().expect("kept");
            std::thread::sleep(hold);
            drop(clone);
        });
        let started = Instant::now();
        handle
            .infer_view_blocking(ViewRequest::new(named(TensorView::from(x.view()))))
            .expect("echo");
        assert!(
            started.elapsed() >= hold - Duration::from_millis(20),
            "returned after {:?}, while the backend still held the caller's memory",
            started.elapsed()
        );
    });
    handle.shutdown();
}
