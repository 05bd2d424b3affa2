//! Inputs borrowed from the caller for the length of one call, so an `ndarray` view (or any
//! slice) reaches ONNX Runtime without a copy of its own: [`Model::run_views`] hands it to
//! ONNX Runtime in place, and [`ModelHandle::infer_view_blocking`] lets the batcher read it
//! where it lies — copied once, into the batch buffer, or not at all when the batch holds this
//! request alone.
//!
//! The borrow has no lifetime the batcher's threads could name, so it is held by a lease: each
//! tensor over the caller's memory carries a [`Token`], and the borrowing call does not return
//! — not even by panicking — until every token has been dropped ([`Scope`]). The batcher drops
//! a request's tensors when it has run it, failed it or dropped it (deadline, shutdown), so
//! the wait ends with the request.
//!
//! [`Model::run_views`]: crate::Model::run_views
//! [`ModelHandle::infer_view_blocking`]: crate::ModelHandle::infer_view_blocking

use std::sync::{Arc, Condvar, Mutex};

use crate::error::{Error, Result};
use crate::tensor::{check_strings, with_element_type, ElementType, Item, Tensor, TensorSlice};

/// How many tensors over a borrowing call's memory are alive.
struct Lease {
    live: Mutex<usize>,
    released: Condvar,
}

impl Lease {
    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One tensor's hold on a borrowing call's memory.
pub(crate) struct Token(Arc<Lease>);

impl Clone for Token {
    fn clone(&self) -> Self {
        *self.0.lock() += 1;
        Self(Arc::clone(&self.0))
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        let mut live = self.0.lock();
        *live -= 1;
        if *live == 0 {
            self.0.released.notify_all();
        }
    }
}

/// A borrowing call's lease: hands out [`Token`]s and, when dropped, waits until every one
/// has been dropped. Declare it before the tensors it lends, so it is dropped after them.
pub(crate) struct Scope(Arc<Lease>);

impl Scope {
    pub(crate) fn new() -> Self {
        Self(Arc::new(Lease {
            live: Mutex::new(0),
            released: Condvar::new(),
        }))
    }

    pub(crate) fn token(&self) -> Token {
        *self.0.lock() += 1;
        Token(Arc::clone(&self.0))
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let mut live = self.0.lock();
        while *live > 0 {
            live = self
                .0
                .released
                .wait(live)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A tensor's elements in a borrowing call's memory.
#[derive(Clone)]
pub(crate) struct Borrowed {
    ty: ElementType,
    ptr: *const u8,
    len: usize,
    _token: Token,
}

// SAFETY: `ptr` points to `len` elements of an `Item` type (all `Send + Sync`), only ever
// read, and valid until the token's scope ends (`Tensor::borrowed`'s contract).
unsafe impl Send for Borrowed {}
// SAFETY: as above.
unsafe impl Sync for Borrowed {}

impl Borrowed {
    /// # Safety
    /// As [`Tensor::borrowed`].
    pub(crate) unsafe fn new(data: TensorSlice<'_>, token: Token) -> Self {
        let (ptr, len) = crate::tensor::with_slice!(data, v => (v.as_ptr().cast::<u8>(), v.len()));
        Self {
            ty: data.element_type(),
            ptr,
            len,
            _token: token,
        }
    }

    pub(crate) fn slice(&self) -> TensorSlice<'_> {
        with_element_type!(self.ty, T => {
            // SAFETY: `ptr` and `len` came from a `&[T]` of this element type that stays
            // valid while the token lives, and the token lives as long as `self`.
            T::wrap_slice(unsafe { std::slice::from_raw_parts(self.ptr.cast::<T>(), self.len) })
        })
    }
}

/// An input borrowed from the caller: a shape and a slice of elements, row-major. From an
/// `ndarray` view in standard layout it borrows; any other view is copied once, here.
#[derive(Debug, Clone)]
pub struct TensorView<'a> {
    shape: Vec<usize>,
    data: ViewData<'a>,
}

#[derive(Debug, Clone)]
enum ViewData<'a> {
    Borrowed(TensorSlice<'a>),
    Owned(Tensor),
}

impl<'a> TensorView<'a> {
    /// A view of `data` as a tensor of `shape`.
    ///
    /// # Errors
    /// [`Error::TensorShape`] if `data.len()` is not the product of `shape`;
    /// [`Error::TensorString`] for a string with a NUL byte.
    pub fn new<T: Item>(shape: impl Into<Vec<usize>>, data: &'a [T]) -> Result<Self> {
        Self::from_slice(shape, T::wrap_slice(data))
    }

    /// A view of `data`, of any element type, as a tensor of `shape`.
    ///
    /// # Errors
    /// As [`TensorView::new`].
    pub fn from_slice(shape: impl Into<Vec<usize>>, data: TensorSlice<'a>) -> Result<Self> {
        let shape = shape.into();
        let expected = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .unwrap_or(usize::MAX);
        if expected != data.len() {
            return Err(Error::TensorShape {
                shape,
                expected,
                len: data.len(),
            });
        }
        check_strings(data)?;
        Ok(Self {
            shape,
            data: ViewData::Borrowed(data),
        })
    }

    /// A view of a tensor's elements (no copy).
    pub fn of(tensor: &'a Tensor) -> Self {
        Self {
            shape: tensor.shape().to_vec(),
            data: ViewData::Borrowed(tensor.data()),
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// A tensor over this view's memory, held by `token`.
    ///
    /// # Safety
    /// As [`Tensor::borrowed`]: `self` must outlive `token`'s scope.
    pub(crate) unsafe fn lend(&self, token: Token) -> Result<Tensor> {
        match &self.data {
            ViewData::Borrowed(data) => {
                check_strings(*data)?;
                // SAFETY: forwarded contract.
                Ok(unsafe { Tensor::borrowed(self.shape.clone(), *data, token) })
            }
            ViewData::Owned(tensor) => Ok(tensor.clone()),
        }
    }
}

impl<'a, T: Item, D: ndarray::Dimension> From<ndarray::ArrayView<'a, T, D>> for TensorView<'a> {
    /// Borrows a view in standard layout; copies any other (transposed, strided) once.
    fn from(view: ndarray::ArrayView<'a, T, D>) -> Self {
        let shape = view.shape().to_vec();
        let data = match view.to_slice() {
            Some(slice) => ViewData::Borrowed(T::wrap_slice(slice)),
            None => ViewData::Owned(Tensor::from_view(view)),
        };
        Self { shape, data }
    }
}

impl<'a, T: Item, D: ndarray::Dimension> From<&'a ndarray::CowArray<'_, T, D>> for TensorView<'a> {
    /// Borrows the array, owned or viewed (copies it once if it is not in standard layout).
    fn from(array: &'a ndarray::CowArray<'_, T, D>) -> Self {
        Self::from(array.view())
    }
}

impl From<Tensor> for TensorView<'static> {
    /// A view that owns its tensor (shared, not copied, when lent).
    fn from(tensor: Tensor) -> Self {
        Self {
            shape: tensor.shape().to_vec(),
            data: ViewData::Owned(tensor),
        }
    }
}

impl<'a, T: Item, D: ndarray::Dimension> From<&'a ndarray::Array<T, D>> for TensorView<'a> {
    /// Borrows the array (copies it once if it is not in standard layout).
    fn from(array: &'a ndarray::Array<T, D>) -> Self {
        Self::from(array.view())
    }
}

/// Lends `inputs` under `scope` as named tensors.
///
/// # Safety
/// `inputs` must outlive `scope` (declare the scope after the inputs' owner, before the
/// tensors).
pub(crate) unsafe fn lend_all(
    scope: &Scope,
    inputs: &[(String, TensorView<'_>)],
) -> Result<crate::model::NamedTensors> {
    inputs
        .iter()
        // SAFETY: forwarded contract.
        .map(|(name, view)| Ok((name.clone(), unsafe { view.lend(scope.token())? })))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lent_view_is_the_callers_memory_and_its_scope_waits_for_every_clone() {
        let data: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let array = ndarray::Array2::from_shape_vec((3, 4), data).expect("array");
        let view = TensorView::from(array.view());
        let scope = Scope::new();
        // SAFETY: `view` and `array` outlive `scope`.
        let tensor = unsafe { view.lend(scope.token()) }.expect("lend");
        assert_eq!(
            tensor.as_slice::<f32>().expect("f32").as_ptr(),
            array.as_ptr(),
            "copied"
        );
        assert_eq!(*scope.0.lock(), 1);
        let clone = tensor.clone();
        assert_eq!(*scope.0.lock(), 2);
        let waiter = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(clone);
        });
        drop(tensor);
        let started = std::time::Instant::now();
        drop(scope); // waits for the clone the other thread drops
        assert!(started.elapsed() >= std::time::Duration::from_millis(40));
        waiter.join().expect("thread");
        // A transposed view is not in standard layout: copied once, when it becomes a view.
        let t = array.t();
        let strided = TensorView::from(t);
        let scope = Scope::new();
        // SAFETY: as above.
        let tensor = unsafe { strided.lend(scope.token()) }.expect("lend");
        assert_eq!(tensor.as_slice::<f32>().expect("f32")[..3], [0.0, 4.0, 8.0]);
    }

    #[test]
    fn views_check_their_shape_and_strings() {
        let owned = ndarray::Array1::from(vec![1f32, 2.]);
        let cow = ndarray::CowArray::from(owned.view());
        let scope = Scope::new();
        // SAFETY: `cow` and `owned` outlive `scope`.
        let lent = unsafe { TensorView::from(&cow).lend(scope.token()) }.expect("lend");
        assert_eq!(
            lent.as_slice::<f32>().expect("f32").as_ptr(),
            owned.as_ptr()
        );
        drop(lent);
        drop(scope);
        let e = TensorView::new([2, 2], &[1f32, 2., 3.][..]).expect_err("short");
        assert!(matches!(e, Error::TensorShape { .. }), "{e}");
        let nul = ["a\0b".to_owned()];
        let e = TensorView::new([1], &nul[..]).expect_err("NUL");
        assert!(matches!(e, Error::TensorString { .. }), "{e}");
    }
}
