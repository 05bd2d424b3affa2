//! What a model takes and returns, read from the session once at load, and the request
//! validation built on it.
//!
//! Validation runs before anything reaches ONNX Runtime, so a bad request gets an error that
//! names the input and the expected and actual values instead of an opaque runtime failure.

use crate::error::{Error, Result};
use crate::tensor::{ElementType, Tensor};

/// One input or output of a model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TensorInfo {
    /// Its name in the graph.
    pub name: String,
    /// Element type.
    pub element_type: ElementType,
    /// Dims; `None` is dynamic (symbolic or unknown).
    pub dims: Vec<Option<i64>>,
}

/// A model's signature.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelMetadata {
    /// Model name (used in errors and metrics).
    pub name: String,
    /// Inputs, in graph order.
    pub inputs: Vec<TensorInfo>,
    /// Outputs, in graph order.
    pub outputs: Vec<TensorInfo>,
    /// Whether dim 0 of every input and output is dynamic, so requests can be stacked along
    /// it. A model with a fixed dim 0 runs one request at a time.
    pub batch_dim: bool,
    /// The image size (height, width) the exporter recorded in the model's metadata
    /// (Ultralytics' `imgsz`), if any: what the invented warm-up feeds an image input whose
    /// height and width are dynamic.
    pub image_size: Option<(usize, usize)>,
    /// Class labels per output name, from the version's label files
    /// (`labels/<output>.txt`, [`crate::labels`]), or a classifier's ZipMap's own classes
    /// where it has no file: what classification answers name. Not serialized (thousands of
    /// strings for an ImageNet model).
    #[serde(skip)]
    pub labels: crate::labels::Labels,
}

impl ModelMetadata {
    pub(crate) fn from_session(name: &str, session: &ort::session::Session) -> Result<Self> {
        let read = |what: &'static str,
                    outlets: &[ort::value::Outlet],
                    zipmap_rows: Option<i64>|
         -> Result<Vec<TensorInfo>> {
            outlets
                .iter()
                .enumerate()
                .map(|(index, o)| {
                    let sparse = is_sparse(session, what == "output", index);
                    let unsupported = || Error::UnsupportedModel {
                        model: name.to_owned(),
                        what,
                        name: o.name().to_owned(),
                        ty: format!("{}{}", if sparse { "sparse " } else { "" }, o.dtype()),
                    };
                    if sparse {
                        return Err(unsupported());
                    }
                    let (ty, shape) = match o.dtype() {
                        ort::value::ValueType::Tensor { ty, shape, .. } => (*ty, shape),
                        // A classifier's ZipMap output, served as `[rows, classes]`.
                        other if what == "output" => {
                            let map =
                                crate::zipmap::MapSequence::of(other).ok_or_else(unsupported)?;
                            return Ok(TensorInfo {
                                name: o.name().to_owned(),
                                element_type: map.element_type(),
                                dims: vec![zipmap_rows, None],
                            });
                        }
                        _ => return Err(unsupported()),
                    };
                    let element_type = ElementType::from_ort(ty).ok_or_else(unsupported)?;
                    let dims = shape.iter().map(|&d| (d >= 0).then_some(d)).collect();
                    Ok(TensorInfo {
                        name: o.name().to_owned(),
                        element_type,
                        dims,
                    })
                })
                .collect()
        };
        let inputs = read("input", session.inputs(), None)?;
        // A ZipMap output has one map per row of the inputs (skl2onnx zips each input row's
        // probabilities): where every input is rows of features (rank 2 or more) with the
        // same fixed dim 0, so is it, so a fixed-batch classifier's rows are answered apart
        // (KServe v1's instances). A 1-D input is one row, not rows.
        let rows = |t: &TensorInfo| t.dims.get(1).and(t.dims.first().copied().flatten());
        let first = inputs.first().and_then(rows);
        let zipmap_rows = first.filter(|_| inputs.iter().all(|t| rows(t) == first));
        let outputs = read("output", session.outputs(), zipmap_rows)?;
        let batch_dim = inputs
            .iter()
            .chain(&outputs)
            .all(|t| t.dims.first().is_some_and(Option::is_none));
        let image_size = session
            .metadata()
            .ok()
            .and_then(|m| m.custom("imgsz"))
            .and_then(|v| parse_image_size(&v));
        Ok(Self {
            name: name.to_owned(),
            inputs,
            outputs,
            batch_dim,
            image_size,
            labels: crate::labels::Labels::new(),
        })
    }

    /// Checks a request against the signature: every input present once and known, element
    /// types, ranks, fixed dims, batch sizes agreeing (models with a batch dim), and no input
    /// over `max_elements`.
    ///
    /// Returns the request's rows (dim 0) for a batched model, 1 otherwise.
    ///
    /// # Errors
    /// The first problem found, as [`Error::UnknownInput`], [`Error::DuplicateInput`],
    /// [`Error::MissingInput`], [`Error::DtypeMismatch`], [`Error::ShapeMismatch`],
    /// [`Error::BatchMismatch`] or [`Error::InputTooLarge`].
    pub fn validate(&self, inputs: &[(String, Tensor)], max_elements: usize) -> Result<usize> {
        let model = || self.name.clone();
        for (i, (name, _)) in inputs.iter().enumerate() {
            if !self.inputs.iter().any(|t| &t.name == name) {
                return Err(Error::UnknownInput {
                    model: model(),
                    name: name.clone(),
                    expected: self.inputs.iter().map(|t| t.name.clone()).collect(),
                });
            }
            if inputs[..i].iter().any(|(n, _)| n == name) {
                return Err(Error::DuplicateInput {
                    model: model(),
                    name: name.clone(),
                });
            }
        }
        let mut rows: Option<(&str, usize)> = None;
        for info in &self.inputs {
            let Some((_, tensor)) = inputs.iter().find(|(n, _)| n == &info.name) else {
                return Err(Error::MissingInput {
                    model: model(),
                    name: info.name.clone(),
                });
            };
            if tensor.element_type() != info.element_type {
                return Err(Error::DtypeMismatch {
                    model: model(),
                    name: info.name.clone(),
                    expected: info.element_type,
                    actual: tensor.element_type(),
                });
            }
            let shape = tensor.shape();
            let dims_ok = shape.len() == info.dims.len()
                && shape
                    .iter()
                    .zip(&info.dims)
                    .all(|(&a, d)| d.is_none_or(|d| i64::try_from(a) == Ok(d)));
            if !dims_ok {
                return Err(Error::ShapeMismatch {
                    model: model(),
                    name: info.name.clone(),
                    expected: info.dims.clone(),
                    actual: shape.to_vec(),
                });
            }
            // A zero dim leaves no elements, but every other dim still sizes what is built
            // from it (a batch padded to its length, a model's mask): counted as one, no dim
            // of an empty tensor escapes the limit.
            let elements = shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d.max(1)))
                .unwrap_or(usize::MAX);
            if elements > max_elements {
                return Err(Error::InputTooLarge {
                    model: model(),
                    name: info.name.clone(),
                    elements,
                    limit: max_elements,
                });
            }
            if self.batch_dim {
                let r = shape[0];
                match rows {
                    None => rows = Some((&info.name, r)),
                    Some((first, first_rows)) if first_rows != r => {
                        return Err(Error::BatchMismatch {
                            model: model(),
                            first: first.to_owned(),
                            first_rows,
                            name: info.name.clone(),
                            rows: r,
                        })
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(rows.map_or(1, |(_, r)| r))
    }
}

/// Reads an `imgsz` value: `[h, w]`, `(h, w)` or one number for both; sides of 1 to 8192.
/// Whether the session's `index`th output (or input) is a sparse tensor. ort describes one as
/// a dense tensor (its `ValueType` has no sparse kind), but a dense value fed to a sparse
/// input fails at every run, and no v2 datatype carries a sparse value: such a model is
/// refused at load, not reported Ready to fail each request. ONNX Runtime's own type info
/// says; a call it fails (it cannot, for an index the session listed) counts as dense.
fn is_sparse(session: &ort::session::Session, output: bool, index: usize) -> bool {
    use ort::sys::{ONNXType, OrtTypeInfo};
    use ort::AsPointer;
    let api = ort::api();
    let get = if output {
        api.SessionGetOutputTypeInfo
    } else {
        api.SessionGetInputTypeInfo
    };
    // Every status ONNX Runtime returns is released; the type info it hands out is released
    // once read.
    let ok = |status: ort::sys::OrtStatusPtr| {
        if status.0.is_null() {
            return true;
        }
        // SAFETY: a non-null status is ours to release, once.
        unsafe { (api.ReleaseStatus)(status.0) };
        false
    };
    let mut info: *mut OrtTypeInfo = std::ptr::null_mut();
    // SAFETY: the session is alive for the call and `index` is below its input (output)
    // count, which is how many outlets ort listed.
    if !ok(unsafe { get(session.ptr(), index, &mut info) }) || info.is_null() {
        return false;
    }
    let mut ty = ONNXType::ONNX_TYPE_UNKNOWN;
    // SAFETY: `info` is the live type info ONNX Runtime just handed out; released here once.
    let read = ok(unsafe { (api.GetOnnxTypeFromTypeInfo)(info, &mut ty) });
    unsafe { (api.ReleaseTypeInfo)(info) };
    read && ty == ONNXType::ONNX_TYPE_SPARSETENSOR
}

fn parse_image_size(v: &str) -> Option<(usize, usize)> {
    let sides: Vec<usize> = v
        .trim()
        .trim_matches(|c| matches!(c, '[' | ']' | '(' | ')'))
        .split(',')
        .map(|p| p.trim().parse().ok().filter(|s| (1..=8192).contains(s)))
        .collect::<Option<_>>()?;
    match sides[..] {
        [side] => Some((side, side)),
        [h, w] => Some((h, w)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_sizes_from_exporter_metadata() {
        assert_eq!(parse_image_size("[320, 320]"), Some((320, 320)));
        assert_eq!(parse_image_size("(480,640)"), Some((480, 640)));
        assert_eq!(parse_image_size("640"), Some((640, 640)));
        for bad in ["", "[]", "[0, 320]", "[1, 2, 3]", "big", "[99999, 1]"] {
            assert_eq!(parse_image_size(bad), None, "{bad}");
        }
    }

    fn meta() -> ModelMetadata {
        ModelMetadata {
            name: "m".into(),
            inputs: vec![
                TensorInfo {
                    name: "a".into(),
                    element_type: ElementType::F32,
                    dims: vec![None, Some(4)],
                },
                TensorInfo {
                    name: "b".into(),
                    element_type: ElementType::I64,
                    dims: vec![None, Some(2)],
                },
            ],
            outputs: vec![TensorInfo {
                name: "y".into(),
                element_type: ElementType::F32,
                dims: vec![None],
            }],
            batch_dim: true,
            image_size: None,
            labels: Default::default(),
        }
    }

    fn a(rows: usize) -> (String, Tensor) {
        (
            "a".into(),
            Tensor::new([rows, 4], vec![0f32; rows * 4]).expect("a"),
        )
    }

    fn b(rows: usize) -> (String, Tensor) {
        (
            "b".into(),
            Tensor::new([rows, 2], vec![0i64; rows * 2]).expect("b"),
        )
    }

    #[test]
    fn accepts_a_good_request_and_counts_rows() {
        assert_eq!(meta().validate(&[a(3), b(3)], 100).expect("valid"), 3);
    }

    type Check = fn(&Error) -> bool;

    #[test]
    fn each_bad_request_gets_its_own_error() {
        let m = meta();
        let cases: Vec<(Vec<(String, Tensor)>, Check)> = vec![
            (
                vec![
                    a(1),
                    b(1),
                    ("c".into(), Tensor::new([1], vec![0f32]).expect("c")),
                ],
                |e| matches!(e, Error::UnknownInput { name, .. } if name == "c"),
            ),
            (vec![a(1), a(1), b(1)], |e| {
                matches!(e, Error::DuplicateInput { .. })
            }),
            (
                vec![a(1)],
                |e| matches!(e, Error::MissingInput { name, .. } if name == "b"),
            ),
            (
                vec![
                    a(1),
                    ("b".into(), Tensor::new([1, 2], vec![0f32; 2]).expect("b")),
                ],
                |e| {
                    matches!(
                        e,
                        Error::DtypeMismatch {
                            expected: ElementType::I64,
                            actual: ElementType::F32,
                            ..
                        }
                    )
                },
            ),
            (
                vec![
                    ("a".into(), Tensor::new([4], vec![0f32; 4]).expect("a")),
                    b(1),
                ],
                |e| matches!(e, Error::ShapeMismatch { actual, .. } if actual == &[4]),
            ),
            (
                vec![
                    ("a".into(), Tensor::new([1, 5], vec![0f32; 5]).expect("a")),
                    b(1),
                ],
                |e| matches!(e, Error::ShapeMismatch { .. }),
            ),
            (vec![a(2), b(3)], |e| {
                matches!(
                    e,
                    Error::BatchMismatch {
                        first_rows: 2,
                        rows: 3,
                        ..
                    }
                )
            }),
            (vec![a(30), b(30)], |e| {
                matches!(
                    e,
                    Error::InputTooLarge {
                        elements: 120,
                        limit: 100,
                        ..
                    }
                )
            }),
        ];
        for (i, (req, check)) in cases.into_iter().enumerate() {
            let err = m.validate(&req, 100).expect_err("must fail");
            assert!(check(&err), "case {i}: {err}");
        }
    }
}
