//! Owned, typed tensors: what callers hand in and get back.
//!
//! A [`Tensor`] is a shape plus one flat row-major `Vec` of a supported element type. Row-major
//! flat storage is what ONNX Runtime reads without copying, and what the batcher concatenates
//! and splits along dim 0. [`Element`] ties each Rust type to its [`ElementType`] so the typed
//! constructors and accessors are written once, generically.

use std::fmt;

use ort::value::TensorElementType;

use crate::error::{Error, Result};

/// Element types kiln serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ElementType {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Signed 32-bit integer.
    I32,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 8-bit integer.
    U8,
    /// Boolean.
    Bool,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 64-bit integer.
    U64,
    /// IEEE 754 half-precision float ([`half::f16`]).
    F16,
    /// bfloat16 ([`half::bf16`]).
    Bf16,
    /// UTF-8 strings (ONNX `string`; the v2 protocol's `BYTES`).
    String,
}

impl ElementType {
    /// The ONNX type name (`float32` style, as in the Open Inference Protocol's lower case).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F64 => "float64",
            Self::I64 => "int64",
            Self::I32 => "int32",
            Self::I8 => "int8",
            Self::U8 => "uint8",
            Self::Bool => "bool",
            Self::I16 => "int16",
            Self::U16 => "uint16",
            Self::U32 => "uint32",
            Self::U64 => "uint64",
            Self::F16 => "float16",
            Self::Bf16 => "bfloat16",
            Self::String => "string",
        }
    }

    /// Bytes per element; 0 for strings, whose elements have no fixed size (their byte form,
    /// [`Tensor::to_le_bytes`], is each string's 4-byte length and bytes).
    pub fn size(self) -> usize {
        match self {
            Self::String => 0,
            Self::F64 | Self::I64 | Self::U64 => 8,
            Self::F32 | Self::I32 | Self::U32 => 4,
            Self::I16 | Self::U16 | Self::F16 | Self::Bf16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    pub(crate) fn from_ort(ty: TensorElementType) -> Option<Self> {
        Some(match ty {
            TensorElementType::Float32 => Self::F32,
            TensorElementType::Float64 => Self::F64,
            TensorElementType::Int64 => Self::I64,
            TensorElementType::Int32 => Self::I32,
            TensorElementType::Int8 => Self::I8,
            TensorElementType::Uint8 => Self::U8,
            TensorElementType::Bool => Self::Bool,
            TensorElementType::Int16 => Self::I16,
            TensorElementType::Uint16 => Self::U16,
            TensorElementType::Uint32 => Self::U32,
            TensorElementType::Uint64 => Self::U64,
            TensorElementType::Float16 => Self::F16,
            TensorElementType::Bfloat16 => Self::Bf16,
            TensorElementType::String => Self::String,
            _ => return None,
        })
    }
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The flat data of a tensor, one variant per [`ElementType`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum TensorData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
    I16(Vec<i16>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    F16(Vec<half::f16>),
    Bf16(Vec<half::bf16>),
    String(Vec<String>),
}

/// A tensor's elements, borrowed: one variant per [`ElementType`] ([`Tensor::data`]).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum TensorSlice<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    I64(&'a [i64]),
    I32(&'a [i32]),
    I8(&'a [i8]),
    U8(&'a [u8]),
    Bool(&'a [bool]),
    I16(&'a [i16]),
    U16(&'a [u16]),
    U32(&'a [u32]),
    U64(&'a [u64]),
    F16(&'a [half::f16]),
    Bf16(&'a [half::bf16]),
    String(&'a [String]),
}

/// Runs `$body` with `$v` bound to the slice of any [`TensorSlice`] variant; with a `strings`
/// arm, the string variant runs that arm instead (for bodies that need a number).
macro_rules! with_slice {
    ($data:expr, $v:ident => $body:expr) => {
        $crate::tensor::with_slice!($data, $v => $body, strings $v => $body)
    };
    ($data:expr, $v:ident => $body:expr, strings $s:ident => $sbody:expr) => {
        match $data {
            $crate::tensor::TensorSlice::F32($v) => $body,
            $crate::tensor::TensorSlice::F64($v) => $body,
            $crate::tensor::TensorSlice::I64($v) => $body,
            $crate::tensor::TensorSlice::I32($v) => $body,
            $crate::tensor::TensorSlice::I8($v) => $body,
            $crate::tensor::TensorSlice::U8($v) => $body,
            $crate::tensor::TensorSlice::Bool($v) => $body,
            $crate::tensor::TensorSlice::I16($v) => $body,
            $crate::tensor::TensorSlice::U16($v) => $body,
            $crate::tensor::TensorSlice::U32($v) => $body,
            $crate::tensor::TensorSlice::U64($v) => $body,
            $crate::tensor::TensorSlice::F16($v) => $body,
            $crate::tensor::TensorSlice::Bf16($v) => $body,
            $crate::tensor::TensorSlice::String($s) => $sbody,
        }
    };
}
pub(crate) use with_slice;

impl TensorData {
    /// The elements, borrowed.
    pub fn as_slice(&self) -> TensorSlice<'_> {
        match self {
            Self::F32(v) => TensorSlice::F32(v),
            Self::F64(v) => TensorSlice::F64(v),
            Self::I64(v) => TensorSlice::I64(v),
            Self::I32(v) => TensorSlice::I32(v),
            Self::I8(v) => TensorSlice::I8(v),
            Self::U8(v) => TensorSlice::U8(v),
            Self::Bool(v) => TensorSlice::Bool(v),
            Self::I16(v) => TensorSlice::I16(v),
            Self::U16(v) => TensorSlice::U16(v),
            Self::U32(v) => TensorSlice::U32(v),
            Self::U64(v) => TensorSlice::U64(v),
            Self::F16(v) => TensorSlice::F16(v),
            Self::Bf16(v) => TensorSlice::Bf16(v),
            Self::String(v) => TensorSlice::String(v),
        }
    }
}

impl TensorSlice<'_> {
    /// The element type.
    pub fn element_type(&self) -> ElementType {
        match self {
            Self::F32(_) => ElementType::F32,
            Self::F64(_) => ElementType::F64,
            Self::I64(_) => ElementType::I64,
            Self::I32(_) => ElementType::I32,
            Self::I8(_) => ElementType::I8,
            Self::U8(_) => ElementType::U8,
            Self::Bool(_) => ElementType::Bool,
            Self::I16(_) => ElementType::I16,
            Self::U16(_) => ElementType::U16,
            Self::U32(_) => ElementType::U32,
            Self::U64(_) => ElementType::U64,
            Self::F16(_) => ElementType::F16,
            Self::Bf16(_) => ElementType::Bf16,
            Self::String(_) => ElementType::String,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        with_slice!(self, v => v.len())
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An owned copy.
    pub fn to_owned_data(&self) -> TensorData {
        with_slice!(self, v => Item::wrap(v.to_vec()))
    }
}

/// Runs `$body` with the type alias `$T` bound to the Rust type of an [`ElementType`]
/// (`String` for strings); with a `strings` arm, strings run that arm instead (for bodies
/// that need an [`Element`]).
macro_rules! with_element_type {
    ($ty:expr, $T:ident => $body:expr) => {
        $crate::tensor::with_element_type!($ty, $T => $body, strings => {
            type $T = String;
            $body
        })
    };
    ($ty:expr, $T:ident => $body:expr, strings => $sbody:expr) => {
        match $ty {
            $crate::tensor::ElementType::F32 => {
                type $T = f32;
                $body
            }
            $crate::tensor::ElementType::F64 => {
                type $T = f64;
                $body
            }
            $crate::tensor::ElementType::I64 => {
                type $T = i64;
                $body
            }
            $crate::tensor::ElementType::I32 => {
                type $T = i32;
                $body
            }
            $crate::tensor::ElementType::I8 => {
                type $T = i8;
                $body
            }
            $crate::tensor::ElementType::U8 => {
                type $T = u8;
                $body
            }
            $crate::tensor::ElementType::Bool => {
                type $T = bool;
                $body
            }
            $crate::tensor::ElementType::I16 => {
                type $T = i16;
                $body
            }
            $crate::tensor::ElementType::U16 => {
                type $T = u16;
                $body
            }
            $crate::tensor::ElementType::U32 => {
                type $T = u32;
                $body
            }
            $crate::tensor::ElementType::U64 => {
                type $T = u64;
                $body
            }
            $crate::tensor::ElementType::F16 => {
                type $T = half::f16;
                $body
            }
            $crate::tensor::ElementType::Bf16 => {
                type $T = half::bf16;
                $body
            }
            $crate::tensor::ElementType::String => $sbody,
        }
    };
}
pub(crate) use with_element_type;

mod sealed {
    /// Only kiln's element types are tensor items.
    pub trait Sealed {}
}

/// A Rust type a tensor can hold: every [`Element`] and `String` (sealed: kiln's types only).
pub trait Item: sealed::Sealed + Clone + fmt::Debug + Default + Send + Sync + 'static {
    /// Its element type.
    const TYPE: ElementType;
    /// Wraps a vector of this type.
    fn wrap(data: Vec<Self>) -> TensorData;
    /// Borrows the vector if `data` holds this type.
    fn view(data: &TensorData) -> Option<&[Self]>;
    /// Wraps a slice of this type.
    fn wrap_slice(data: &[Self]) -> TensorSlice<'_>;
    /// The slice if `data` holds this type.
    fn slice(data: TensorSlice<'_>) -> Option<&[Self]>;
    /// Takes the vector back out if `data` holds this type (else returns `data`).
    ///
    /// # Errors
    /// `data` itself when it holds another type.
    fn unwrap(data: TensorData) -> std::result::Result<Vec<Self>, TensorData>;
    /// Converts a configured value (such as a pad value) to this type (`as` semantics;
    /// non-zero is `true`; a string is always empty).
    fn from_f64(v: f64) -> Self;
}

/// A number type that can be a tensor element: what ONNX Runtime reads in place.
pub trait Element: Item + ort::value::PrimitiveTensorElementType + Copy {
    /// Reads one element from its little-endian bytes (`bytes.len()` is the element's size;
    /// a bool is one byte, non-zero is `true`).
    fn read_le(bytes: &[u8]) -> Self;
    /// Appends this element's little-endian bytes.
    fn write_le(self, out: &mut Vec<u8>);
}

macro_rules! item {
    ($t:ty => $variant:ident, |$v:ident| $cast:expr) => {
        impl sealed::Sealed for $t {}
        impl Item for $t {
            const TYPE: ElementType = ElementType::$variant;
            fn wrap(data: Vec<Self>) -> TensorData {
                TensorData::$variant(data)
            }
            fn view(data: &TensorData) -> Option<&[Self]> {
                match data {
                    TensorData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn wrap_slice(data: &[Self]) -> TensorSlice<'_> {
                TensorSlice::$variant(data)
            }
            fn slice(data: TensorSlice<'_>) -> Option<&[Self]> {
                match data {
                    TensorSlice::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn unwrap(data: TensorData) -> std::result::Result<Vec<Self>, TensorData> {
                match data {
                    TensorData::$variant(v) => Ok(v),
                    other => Err(other),
                }
            }
            fn from_f64($v: f64) -> Self {
                $cast
            }
        }
    };
}
item!(String => String, |_v| String::new());

macro_rules! element {
    (@cast $v:ident, bool) => { $v != 0.0 };
    (@cast $v:ident, f16) => { half::f16::from_f64($v) };
    (@cast $v:ident, bf16) => { half::bf16::from_f64($v) };
    (@cast $v:ident, $t:ty) => { $v as $t };
    (@from_le $b:ident, bool) => { $b.first().is_some_and(|&b| b != 0) };
    (@from_le $b:ident, $t:ty) => { <$t>::from_le_bytes($b.try_into().unwrap_or_default()) };
    (@put_le $x:ident, $out:ident, bool) => { $out.push(u8::from($x)) };
    (@put_le $x:ident, $out:ident, $t:ty) => { $out.extend_from_slice(&$x.to_le_bytes()) };
    ($($t:tt => $variant:ident),* $(,)?) => {$(
        item!($t => $variant, |v| element!(@cast v, $t));
        impl Element for $t {
            fn read_le(bytes: &[u8]) -> Self {
                element!(@from_le bytes, $t)
            }
            fn write_le(self, out: &mut Vec<u8>) {
                element!(@put_le self, out, $t)
            }
        }
    )*};
}
use half::{bf16, f16};
element!(
    f32 => F32, f64 => F64, i64 => I64, i32 => I32, i8 => I8, u8 => U8, bool => Bool,
    i16 => I16, u16 => U16, u32 => U32, u64 => U64, f16 => F16, bf16 => Bf16,
);

/// A dense row-major tensor. Its elements are shared, not copied, when it is cloned; inside
/// a borrowing call ([`Model::run_views`](crate::Model::run_views),
/// [`ModelHandle::infer_view_blocking`](crate::ModelHandle::infer_view_blocking)) they may be
/// the caller's memory.
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

/// Where a tensor's elements are.
#[derive(Clone)]
enum Storage {
    /// Its own, shared between clones.
    Owned(std::sync::Arc<TensorData>),
    /// The caller's, for the length of a borrowing call.
    Borrowed(crate::borrowed::Borrowed),
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor")
            .field("shape", &self.shape)
            .field("data", &self.data())
            .finish()
    }
}

impl PartialEq for Tensor {
    fn eq(&self, other: &Self) -> bool {
        self.shape == other.shape && self.data() == other.data()
    }
}

impl Tensor {
    /// A tensor of `shape` holding `data` (row-major).
    ///
    /// # Errors
    /// [`Error::TensorShape`] if `data.len()` is not the product of `shape`;
    /// [`Error::TensorString`] for a string with a NUL byte.
    pub fn new<T: Item>(shape: impl Into<Vec<usize>>, data: Vec<T>) -> Result<Self> {
        Self::from_data(shape.into(), T::wrap(data))
    }

    /// A tensor from already wrapped data.
    ///
    /// # Errors
    /// [`Error::TensorShape`] if the data length is not the product of `shape`;
    /// [`Error::TensorString`] for a string with a NUL byte.
    pub fn from_data(shape: Vec<usize>, data: TensorData) -> Result<Self> {
        let expected = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .unwrap_or(usize::MAX);
        let len = data.as_slice().len();
        if expected != len {
            return Err(Error::TensorShape {
                shape,
                expected,
                len,
            });
        }
        check_strings(data.as_slice())?;
        Ok(Self {
            shape,
            storage: Storage::Owned(std::sync::Arc::new(data)),
        })
    }

    /// A tensor over `data`'s memory, held by `token`.
    ///
    /// # Safety
    /// `data` must stay valid and unchanged until `token` and every clone of it (each tensor
    /// made from it, and their clones) are dropped: the caller waits for that before its
    /// borrow ends ([`crate::borrowed::Scope`]).
    pub(crate) unsafe fn borrowed(
        shape: Vec<usize>,
        data: TensorSlice<'_>,
        token: crate::borrowed::Token,
    ) -> Self {
        Self {
            shape,
            // SAFETY: forwarded contract.
            storage: Storage::Borrowed(unsafe { crate::borrowed::Borrowed::new(data, token) }),
        }
    }

    /// A tensor from raw little-endian row-major bytes (the v2 protocol's binary data and raw
    /// contents, the C ABI's buffers). Strings are each a 4-byte little-endian length and
    /// that many bytes of UTF-8, as the protocol's `BYTES`.
    ///
    /// # Errors
    /// [`Error::TensorBytes`] if `bytes` is not exactly `shape`'s elements of `ty`;
    /// [`Error::TensorString`] for string bytes that do not parse, are not UTF-8 or hold a
    /// NUL.
    pub fn from_le_bytes(ty: ElementType, shape: Vec<usize>, bytes: &[u8]) -> Result<Self> {
        let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let data = with_element_type!(ty, T => {
            if count.and_then(|n| n.checked_mul(ty.size())) != Some(bytes.len()) {
                return Err(Error::TensorBytes {
                    element_type: ty,
                    shape,
                    expected: count.and_then(|n| n.checked_mul(ty.size())),
                    len: bytes.len(),
                });
            }
            T::wrap(bytes.chunks_exact(ty.size()).map(T::read_le).collect())
        }, strings => TensorData::String(read_strings(bytes, count.unwrap_or(usize::MAX))?));
        // Strings: a count other than the shape's is refused here.
        Self::from_data(shape, data)
    }

    /// The data as raw little-endian row-major bytes (a bool is one byte, 0 or 1; a string
    /// its 4-byte little-endian length and its bytes).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.byte_len());
        with_slice!(self.data(), v => v.iter().for_each(|x| x.write_le(&mut out)), strings v => {
            for s in v {
                // A string over 4 GiB cannot be in a tensor: its request would be refused
                // long before (body and element limits).
                out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        });
        out
    }

    /// A tensor from an owned `ndarray` array of any dimension: its buffer is taken as it
    /// is when the array is row-major and covers the whole buffer (no copy), else the
    /// elements are copied in row-major order (a transposed or sliced array).
    pub fn from_array<T: Item, D: ndarray::Dimension>(array: ndarray::Array<T, D>) -> Self {
        let shape = array.shape().to_vec();
        let len = array.len();
        let data = if array.is_standard_layout() {
            match array.into_raw_vec_and_offset() {
                // The whole buffer, from its start: the elements in order.
                (raw, Some(0) | None) if raw.len() == len => raw,
                // A slice of a larger buffer (`slice_move`): only its elements.
                (raw, offset) => {
                    let start = offset.unwrap_or(0);
                    raw.into_iter().skip(start).take(len).collect()
                }
            }
        } else {
            array.iter().cloned().collect()
        };
        Self {
            shape,
            storage: Storage::Owned(std::sync::Arc::new(T::wrap(data))),
        }
    }

    /// A tensor from an `ndarray` view of any dimension and layout: the elements are copied
    /// once, in row-major order. To run a view without this copy, use a
    /// [`TensorView`](crate::TensorView) with [`Model::run_views`](crate::Model::run_views) or
    /// [`ModelHandle::infer_view_blocking`](crate::ModelHandle::infer_view_blocking).
    pub fn from_view<T: Item, D: ndarray::Dimension>(view: ndarray::ArrayView<'_, T, D>) -> Self {
        let shape = view.shape().to_vec();
        let data = match view.as_slice() {
            Some(contiguous) => contiguous.to_vec(),
            None => view.iter().cloned().collect(),
        };
        Self {
            shape,
            storage: Storage::Owned(std::sync::Arc::new(T::wrap(data))),
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn element_type(&self) -> ElementType {
        self.data().element_type()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data().len()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size of the data in bytes (of strings, their byte form: [`Tensor::to_le_bytes`]).
    pub fn byte_len(&self) -> usize {
        match self.data() {
            TensorSlice::String(v) => v.iter().map(|s| 4 + s.len()).sum(),
            _ => self.len() * self.element_type().size(),
        }
    }

    /// Bytes the elements hold in memory: [`Tensor::byte_len`] for numbers; for strings, each
    /// element's `String` and its heap block (sized as glibc's `malloc` sizes it: 8 bytes of
    /// header, 16-byte steps, 32 at least), however short the text. The batcher counts a
    /// queued request's inputs this way against `max_queue_bytes`.
    pub fn memory_len(&self) -> usize {
        match self.data() {
            TensorSlice::String(v) => v
                .iter()
                .map(|s| {
                    let block = match s.capacity() {
                        0 => 0,
                        n => (n + 8).next_multiple_of(16).max(32),
                    };
                    std::mem::size_of::<String>() + block
                })
                .sum(),
            _ => self.byte_len(),
        }
    }

    /// The elements, borrowed.
    pub fn data(&self) -> TensorSlice<'_> {
        match &self.storage {
            Storage::Owned(data) => data.as_slice(),
            Storage::Borrowed(b) => b.slice(),
        }
    }

    /// Its elements, taking them out of the tensor (copied only if they are shared with a
    /// clone or borrowed).
    pub fn into_data(self) -> TensorData {
        match self.storage {
            Storage::Owned(data) => {
                std::sync::Arc::try_unwrap(data).unwrap_or_else(|shared| (*shared).clone())
            }
            Storage::Borrowed(b) => b.slice().to_owned_data(),
        }
    }

    /// The tensor with elements of its own (copied if they are a borrowing call's).
    pub(crate) fn into_owned(self) -> Self {
        match self.storage {
            Storage::Owned(_) => self,
            Storage::Borrowed(b) => Self {
                storage: Storage::Owned(std::sync::Arc::new(b.slice().to_owned_data())),
                shape: self.shape,
            },
        }
    }

    /// The flat data as `T`.
    ///
    /// # Errors
    /// [`Error::TensorType`] if the tensor holds another type.
    pub fn as_slice<T: Item>(&self) -> Result<&[T]> {
        T::slice(self.data()).ok_or(Error::TensorType {
            expected: T::TYPE,
            actual: self.element_type(),
        })
    }

    /// A view as an `ndarray` array.
    ///
    /// # Errors
    /// [`Error::TensorType`] if the tensor holds another type.
    pub fn to_array<T: Item>(&self) -> Result<ndarray::ArrayViewD<'_, T>> {
        let data = self.as_slice::<T>()?;
        // The constructor checked that the data length matches the shape.
        ndarray::ArrayViewD::from_shape(self.shape.as_slice(), data).map_err(|_| {
            Error::TensorShape {
                shape: self.shape.clone(),
                expected: self.shape.iter().product(),
                len: data.len(),
            }
        })
    }
}

impl<T: Item, D: ndarray::Dimension> From<ndarray::Array<T, D>> for Tensor {
    /// [`Tensor::from_array`].
    fn from(array: ndarray::Array<T, D>) -> Self {
        Self::from_array(array)
    }
}

impl<T: Item, D: ndarray::Dimension> From<ndarray::ArrayView<'_, T, D>> for Tensor {
    /// [`Tensor::from_view`].
    fn from(view: ndarray::ArrayView<'_, T, D>) -> Self {
        Self::from_view(view)
    }
}

/// Strings ONNX Runtime would cut short (a NUL byte) are refused.
pub(crate) fn check_strings(data: TensorSlice<'_>) -> Result<()> {
    if let TensorSlice::String(v) = data {
        if let Some(index) = v.iter().position(|s| s.as_bytes().contains(&0)) {
            return Err(nul_byte(index));
        }
    }
    Ok(())
}

fn nul_byte(index: usize) -> Error {
    Error::TensorString {
        index,
        reason: "holds a NUL byte, where ONNX Runtime would cut it short".into(),
    }
}

/// At most `count` strings from their byte form (each a 4-byte little-endian length and that
/// many bytes); bytes left after them are an error.
fn read_strings(mut bytes: &[u8], count: usize) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(count.min(bytes.len() / 4));
    while !bytes.is_empty() {
        if out.len() == count {
            return Err(Error::TensorString {
                index: count,
                reason: format!("{} bytes follow the shape's {count} strings", bytes.len()),
            });
        }
        let index = out.len();
        let bad = |reason: String| Error::TensorString { index, reason };
        let (len, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| bad(format!("{} bytes left, not a 4-byte length", bytes.len())))?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(bad(format!(
                "its length says {len} bytes but {} are left",
                rest.len()
            )));
        }
        let (text, rest) = rest.split_at(len);
        let text = std::str::from_utf8(text).map_err(|e| bad(format!("not UTF-8: {e}")))?;
        out.push(text.to_owned());
        bytes = rest;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_and_views_of_any_dimension_and_layout_become_row_major_tensors() {
        use ndarray::{s, Array2};
        let a = Array2::from_shape_vec((3, 2), (0..6).collect::<Vec<i32>>()).expect("array");
        // Owned, row-major: taken as is.
        let t = Tensor::from(a.clone());
        assert_eq!(
            (t.shape(), t.as_slice::<i32>().expect("i32")),
            (&[3, 2][..], &[0, 1, 2, 3, 4, 5][..])
        );
        // Owned, a slice of a larger buffer: only its elements.
        let t = Tensor::from(a.clone().slice_move(s![1.., ..]));
        assert_eq!(
            (t.shape(), t.as_slice::<i32>().expect("i32")),
            (&[2, 2][..], &[2, 3, 4, 5][..])
        );
        // Owned, transposed: copied in row-major order.
        let t = Tensor::from(a.clone().reversed_axes());
        assert_eq!(
            (t.shape(), t.as_slice::<i32>().expect("i32")),
            (&[2, 3][..], &[0, 2, 4, 1, 3, 5][..])
        );
        // Views, contiguous and strided.
        let t = Tensor::from(a.view());
        assert_eq!(t.as_slice::<i32>().expect("i32"), &[0, 1, 2, 3, 4, 5]);
        let t = Tensor::from(a.slice(s![.., 1]));
        assert_eq!(
            (t.shape(), t.as_slice::<i32>().expect("i32")),
            (&[3][..], &[1, 3, 5][..])
        );
        // And back.
        assert_eq!(
            t.to_array::<i32>()
                .expect("view")
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            vec![1, 3, 5]
        );
    }

    #[test]
    fn memory_counts_each_string_and_its_heap_block() {
        let strings = ["", "cat", &"x".repeat(30)].map(str::to_owned);
        let t = Tensor::new([3], strings.to_vec()).expect("strings");
        assert_eq!(t.byte_len(), 4 + 7 + 34);
        // 24 a `String`; blocks: none, 32 (the least), 30 + 8 rounded up to 48.
        assert_eq!(t.memory_len(), 3 * 24 + 32 + 48);
        let f = Tensor::new([2, 3], vec![0f32; 6]).expect("floats");
        assert_eq!(f.memory_len(), f.byte_len());
    }

    #[test]
    fn constructor_checks_the_shape() {
        let t = Tensor::new([2, 3], vec![0f32; 6]).expect("valid");
        assert_eq!(
            (t.shape(), t.len(), t.byte_len(), t.element_type()),
            (&[2usize, 3][..], 6, 24, ElementType::F32)
        );
        let err = Tensor::new([2, 3], vec![0i64; 5]).expect_err("5 != 6");
        assert!(
            matches!(
                err,
                Error::TensorShape {
                    expected: 6,
                    len: 5,
                    ..
                }
            ),
            "{err}"
        );
        let huge = Tensor::new([usize::MAX, 2], vec![0u8; 1]);
        assert!(huge.is_err(), "overflowing shape is rejected, not wrapped");
    }

    #[test]
    fn typed_access_and_ndarray_round_trip() {
        let a = ndarray::Array2::from_shape_fn((2, 2), |(i, j)| (i * 2 + j) as i32).into_dyn();
        let t = Tensor::from_array(a.t().to_owned().into_dyn());
        assert_eq!(t.as_slice::<i32>().expect("i32"), &[0, 2, 1, 3]);
        assert!(matches!(
            t.as_slice::<f32>(),
            Err(Error::TensorType {
                expected: ElementType::F32,
                actual: ElementType::I32
            })
        ));
        assert_eq!(t.to_array::<i32>().expect("view"), a.t());
    }

    #[test]
    fn every_element_type_round_trips_through_little_endian_bytes() {
        let tensors = [
            Tensor::new([2], vec![1.5f32, -2.0]),
            Tensor::new([2], vec![1.5f64, -2.0]),
            Tensor::new([2], vec![-7i64, 1 << 40]),
            Tensor::new([2], vec![-7i32, 1 << 20]),
            Tensor::new([2], vec![-7i8, 7]),
            Tensor::new([2], vec![0u8, 255]),
            Tensor::new([2], vec![true, false]),
            Tensor::new([2], vec![-7i16, 300]),
            Tensor::new([2], vec![7u16, 65535]),
            Tensor::new([2], vec![7u32, u32::MAX]),
            Tensor::new([2], vec![7u64, u64::MAX]),
            Tensor::new(
                [2],
                vec![half::f16::from_f32(1.5), half::f16::from_f32(-2.0)],
            ),
            Tensor::new(
                [2],
                vec![half::bf16::from_f32(1.5), half::bf16::from_f32(-2.0)],
            ),
        ];
        for t in tensors {
            let t = t.expect("tensor");
            let bytes = t.to_le_bytes();
            assert_eq!(bytes.len(), t.byte_len(), "{t:?}");
            let back = Tensor::from_le_bytes(t.element_type(), t.shape().to_vec(), &bytes)
                .expect("decode");
            assert_eq!(back, t);
        }
        // The half types are the IEEE / bfloat16 bit patterns, little-endian.
        let h = Tensor::new([1], vec![half::f16::from_f32(1.0)]).expect("f16");
        assert_eq!(h.to_le_bytes(), vec![0x00, 0x3c]);
        let b = Tensor::new([1], vec![half::bf16::from_f32(1.0)]).expect("bf16");
        assert_eq!(b.to_le_bytes(), vec![0x80, 0x3f]);
        let short = Tensor::from_le_bytes(ElementType::F16, vec![2], &[0; 3]);
        assert!(matches!(
            short,
            Err(Error::TensorBytes {
                expected: Some(4),
                len: 3,
                ..
            })
        ));
        let huge = Tensor::from_le_bytes(ElementType::U64, vec![usize::MAX, 2], &[]);
        assert!(matches!(
            huge,
            Err(Error::TensorBytes { expected: None, .. })
        ));
    }
}
