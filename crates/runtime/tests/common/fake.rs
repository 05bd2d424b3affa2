//! A fake backend for scheduler tests: input `x` i64 [batch, width] whose rows carry a request
//! id; output `y = 10 x + 1`. Negative ids fail the batch, id -999 panics. Batches can be held
//! at a gate so a test controls when instances are busy.

use std::sync::{Arc, Condvar, Mutex};

use kiln::batch::Backend;
use kiln::{ElementType, Error, ModelMetadata, NamedTensors, Tensor, TensorInfo};

/// Blocks batches until opened; counts batches that are waiting inside.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
    inside: Mutex<usize>,
    inside_cv: Condvar,
}

impl Gate {
    pub fn closed() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn open(&self) {
        *self.open.lock().expect("gate") = true;
        self.cv.notify_all();
    }

    fn pass(&self) {
        *self.inside.lock().expect("gate") += 1;
        self.inside_cv.notify_all();
        let mut open = self.open.lock().expect("gate");
        while !*open {
            open = self.cv.wait(open).expect("gate");
        }
    }

    /// Waits until `n` batches have reached the gate.
    pub fn wait_inside(&self, n: usize) {
        assert!(
            self.wait_inside_for(n, std::time::Duration::from_secs(60)),
            "{n} batches never reached the gate"
        );
    }

    /// Waits up to `timeout` for `n` batches at the gate; whether they arrived.
    pub fn wait_inside_for(&self, n: usize, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut inside = self.inside.lock().expect("gate");
        while *inside < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            inside = self.inside_cv.wait_timeout(inside, left).expect("gate").0;
        }
        true
    }
}

/// Everything the fake saw: per batch, the ids of its rows.
pub type Seen = Arc<Mutex<Vec<Vec<i64>>>>;

pub struct Fake {
    pub seen: Seen,
    pub gate: Option<Arc<Gate>>,
    pub delay: std::time::Duration,
}

impl Fake {
    pub fn new(seen: &Seen) -> Self {
        Self {
            seen: Arc::clone(seen),
            gate: None,
            delay: std::time::Duration::ZERO,
        }
    }
}

impl Backend for Fake {
    fn run(&mut self, inputs: &NamedTensors) -> kiln::Result<NamedTensors> {
        let x = &inputs[0].1;
        let data = x.as_slice::<i64>()?;
        let width = x.shape()[1].max(1);
        let ids: Vec<i64> = data
            .chunks(width)
            .map(|r| r.first().copied().unwrap_or(0))
            .collect();
        if let Some(g) = &self.gate {
            g.pass();
        }
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        self.seen.lock().expect("seen").push(ids.clone());
        if ids.contains(&-999) {
            panic!("fake backend told to panic");
        }
        if ids.iter().any(|&i| i < 0) {
            return Err(Error::InvalidConfig {
                field: "fake",
                reason: "poisoned row".into(),
            });
        }
        let y: Vec<i64> = data.iter().map(|v| v * 10 + 1).collect();
        Ok(vec![("y".into(), Tensor::new(x.shape().to_vec(), y)?)])
    }
}

pub fn metadata(batch_dim: bool) -> ModelMetadata {
    let d0 = if batch_dim { None } else { Some(1) };
    ModelMetadata {
        name: "fake".into(),
        inputs: vec![TensorInfo {
            name: "x".into(),
            element_type: ElementType::I64,
            dims: vec![d0, None],
        }],
        outputs: vec![TensorInfo {
            name: "y".into(),
            element_type: ElementType::I64,
            dims: vec![d0, None],
        }],
        batch_dim,
        image_size: None,
        labels: Default::default(),
    }
}

/// A request of `rows` rows of `width` columns, every value `id`.
pub fn request(id: i64, rows: usize, width: usize) -> NamedTensors {
    vec![(
        "x".into(),
        Tensor::new([rows, width], vec![id; rows * width]).expect("x"),
    )]
}

/// Checks an answer is exactly `request(id, rows, width)` transformed.
pub fn assert_own_rows(out: &NamedTensors, id: i64, rows: usize, width: usize) {
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.shape(), &[rows, width], "request {id}: shape");
    assert!(
        out[0]
            .1
            .as_slice::<i64>()
            .expect("y")
            .iter()
            .all(|&v| v == id * 10 + 1),
        "request {id} got someone else's rows"
    );
}
