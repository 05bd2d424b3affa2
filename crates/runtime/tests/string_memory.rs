//! String tensors reach ONNX Runtime and come back without transient copies on kiln's side.
//!
//! ONNX Runtime holds one `std::string` per element; `ort`'s own constructor got there through
//! a `CString` per element and an array of pointers to them (about 56 bytes an element, one
//! allocation each, on top of the request), and its reader through one buffer of every
//! string's bytes and an offset per element. A request of eight million short strings held a
//! gigabyte while it was converted. Counted here with a global allocator that records the
//! allocations and the high-water mark of Rust's heap: running `strings.onnx` may allocate
//! the outputs it returns and a few small vectors, nothing per element beyond them.
//!
//! Its own test binary: the counting allocator sees every thread of the process.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::load;
use kiln::{ModelOptions, NamedTensors, Tensor};

/// The system allocator, counting the bytes live and their high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Allocations made, and those still live.
static MADE: AtomicUsize = AtomicUsize::new(0);
static HELD: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to `System` unchanged; only the counts are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
            MADE.fetch_add(1, Ordering::Relaxed);
            HELD.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        HELD.fetch_sub(1, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let live = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                    + (new_size - layout.size());
                PEAK.fetch_max(live, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

#[test]
fn string_tensors_cost_no_transient_memory_per_element() {
    let mut model = load("strings.onnx", ModelOptions::new());
    // Warm: ONNX Runtime's and ort's one-time allocations happen on the first run.
    let small: NamedTensors = vec![
        (
            "text".into(),
            Tensor::new([1, 3], vec!["cat".to_owned(); 3]).expect("text"),
        ),
        ("n".into(), Tensor::new([1, 1], vec![1i64]).expect("n")),
    ];
    model.run(&small).expect("warm-up run");

    let rows = 100_000;
    let words = ["cat", "dog", "", "a longer string than sixteen bytes"];
    let text: Vec<String> = (0..rows * 3)
        .map(|i| words[i % words.len()].to_owned())
        .collect();
    let inputs: NamedTensors = vec![
        ("text".into(), Tensor::new([rows, 3], text).expect("text")),
        (
            "n".into(),
            Tensor::new([rows, 1], vec![2i64; rows]).expect("n"),
        ),
    ];

    let before = LIVE.load(Ordering::Relaxed);
    let (made, held) = (MADE.load(Ordering::Relaxed), HELD.load(Ordering::Relaxed));
    PEAK.store(before, Ordering::Relaxed);
    let outputs = model.run(&inputs).expect("runs");
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let kept = LIVE.load(Ordering::Relaxed) - before;
    let made = MADE.load(Ordering::Relaxed) - made;
    let kept_allocations = HELD.load(Ordering::Relaxed) - held;

    // The answers are right (echo = text, label of 2 = "two").
    assert_eq!(outputs[0].1, inputs[0].1);
    assert!(outputs[2]
        .1
        .as_slice::<String>()
        .expect("label")
        .iter()
        .all(|l| l == "two"));
    // `ort`'s CString route made an allocation per element (300,000) and freed it, its reader
    // two buffers of 8 bytes an element and every byte of text; the outputs' own strings are
    // what the run keeps.
    let freed = made - kept_allocations;
    assert!(
        freed < 1_000,
        "running 300,000 strings made {made} allocations and freed {freed} of them before it \
         returned"
    );
    let transient = peak - kept;
    assert!(
        transient < 256 << 10,
        "running 300,000 strings allocated {transient} bytes beyond the {kept} bytes of \
         outputs it returned (peak {peak})"
    );
    drop(outputs);
}
