//! Execution providers: what the caller asks for, what happens when it is unavailable, and
//! what actually ends up running the graph.
//!
//! Registration succeeding does not mean the GPU runs the model: ONNX Runtime may place some
//! or all nodes on the CPU. With ONNX Runtime 1.24 or newer kiln asks the session for its
//! per-node assignment (`session.record_ep_graph_assignment_info`) and reports node counts per
//! provider; below 1.24 it reports the registration result.

use std::ffi::{c_char, c_void, CStr};

use crate::runtime::Runtime;

/// Where a model should run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", deny_unknown_fields)]
pub enum Device {
    /// ONNX Runtime's CPU provider.
    #[default]
    Cpu,
    /// The CUDA provider on one GPU. Whether a failure falls back to the CPU is decided by
    /// [`Fallback`] (default: fail).
    Cuda {
        /// CUDA device ordinal.
        device_id: i32,
    },
    /// CUDA device 0 if it works, the CPU otherwise (always falls back, with a warning).
    Auto,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("CPU"),
            Self::Cuda { device_id } => write!(f, "CUDA:{device_id}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;

    /// `cpu`, `auto`, `cuda` (device 0) or `cuda:N`, case-insensitive: the spelling flags,
    /// environment variables and the C ABI's options use.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "cpu" => Ok(Self::Cpu),
            "auto" => Ok(Self::Auto),
            "cuda" => Ok(Self::Cuda { device_id: 0 }),
            _ => lower
                .strip_prefix("cuda:")
                .and_then(|id| id.parse().ok())
                .filter(|id: &i32| *id >= 0)
                .map(|device_id| Self::Cuda { device_id })
                .ok_or_else(|| format!("{s:?} is not `cpu`, `auto`, `cuda` or `cuda:N`")),
        }
    }
}

/// What a failed CUDA registration does for [`Device::Cuda`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Fail the load with [`crate::Error::ProviderUnavailable`]. The default: asking for a GPU
    /// by name and silently getting a CPU is a capacity surprise in production.
    #[default]
    Fail,
    /// Load on the CPU, log a warning, and report the fallback in [`ProviderReport`].
    Cpu,
}

/// An execution provider that holds (part of) a graph.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub enum Provider {
    /// `CPUExecutionProvider`.
    Cpu,
    /// `CUDAExecutionProvider`.
    Cuda {
        /// CUDA device ordinal.
        device_id: i32,
    },
    /// Any other provider, by its ONNX Runtime name.
    Other(String),
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("CPUExecutionProvider"),
            Self::Cuda { device_id } => write!(f, "CUDAExecutionProvider:{device_id}"),
            Self::Other(name) => f.write_str(name),
        }
    }
}

/// How [`ProviderReport::provider`] was determined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ReportSource {
    /// From the session's per-node assignment (ONNX Runtime ≥ 1.24).
    GraphAssignment,
    /// From which provider registered (older ONNX Runtime, or the assignment was unreadable).
    Registration,
}

/// Where a loaded model really runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProviderReport {
    /// What the caller asked for.
    pub requested: Device,
    /// The provider holding the graph: CUDA if any node runs there, else the CPU.
    pub provider: Provider,
    /// Nodes per provider name, when read from the graph assignment.
    pub nodes: Vec<(String, usize)>,
    /// How `provider` was determined.
    pub source: ReportSource,
    /// Why the requested provider is not the one in use, if it is not.
    pub fallback_reason: Option<String>,
}

/// Session config key that makes ONNX Runtime (≥ 1.24) record the node assignment.
pub(crate) const RECORD_ASSIGNMENT_KEY: &str = "session.record_ep_graph_assignment_info";
/// First ONNX Runtime minor version with the graph-assignment API.
pub(crate) const ASSIGNMENT_MIN_MINOR: u32 = 24;

type Status = *mut ort::sys::OrtStatus;

/// The API 24 entries kiln needs, laid out after the API 23 table that `ort` (built with
/// `api-23`) knows. ONNX Runtime only ever appends to `OrtApi`, so the entries of version 24
/// follow those of version 23 in this order (as in `onnxruntime_c_api.h` of 1.24).
#[repr(C)]
struct ApiV24 {
    v23: ort::sys::OrtApi,
    /// `TensorTypeAndShape_HasShape` .. `CreateEnvWithOptions`, unused here.
    _before: [*const c_void; 17],
    session_get_ep_graph_assignment_info: unsafe extern "system" fn(
        *const ort::sys::OrtSession,
        *mut *const *const c_void,
        *mut usize,
    ) -> Status,
    ep_assigned_subgraph_get_ep_name:
        unsafe extern "system" fn(*const c_void, *mut *const c_char) -> Status,
    ep_assigned_subgraph_get_nodes:
        unsafe extern "system" fn(*const c_void, *mut *const *const c_void, *mut usize) -> Status,
}

/// Reads how many nodes each provider holds. `None` (with a debug log) when the library is
/// older than 1.24 or the call fails; the caller then reports the registration result.
pub(crate) fn graph_assignment(
    runtime: &Runtime,
    session: &ort::session::Session,
) -> Option<Vec<(String, usize)>> {
    use ort::AsPointer;
    if runtime.library().minor < ASSIGNMENT_MIN_MINOR {
        return None;
    }
    // SAFETY: the probe in `runtime` checked that this library exports `OrtGetApiBase` with
    // the standard signature.
    let get_base = unsafe {
        runtime
            .raw_library()
            .get::<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase>(b"OrtGetApiBase\0")
    }
    .ok()?;
    // SAFETY: `OrtGetApiBase` returns a pointer to a static table; `GetApi(24)` returns null or
    // a table valid for API version 24, which the library supports (minor >= 24 checked above).
    let api = unsafe { ((*get_base()).GetApi)(ASSIGNMENT_MIN_MINOR) }.cast::<ApiV24>();
    if api.is_null() {
        return None;
    }
    // SAFETY: `api` is a valid version-24 table (see above); the session pointer is live for
    // this call; the returned arrays are owned by the session and outlive this function's use.
    unsafe {
        let api = &*api;
        let check = |status: Status| -> Option<()> {
            if status.is_null() {
                return Some(());
            }
            let msg = CStr::from_ptr((api.v23.GetErrorMessage)(status))
                .to_string_lossy()
                .into_owned();
            (api.v23.ReleaseStatus)(status);
            tracing::debug!(error = %msg, "graph assignment info unavailable");
            None
        };
        let mut subgraphs: *const *const c_void = std::ptr::null();
        let mut count = 0usize;
        check((api.session_get_ep_graph_assignment_info)(
            session.ptr(),
            &mut subgraphs,
            &mut count,
        ))?;
        let mut per_ep: Vec<(String, usize)> = Vec::new();
        for i in 0..count {
            let sub = *subgraphs.add(i);
            let mut name: *const c_char = std::ptr::null();
            check((api.ep_assigned_subgraph_get_ep_name)(sub, &mut name))?;
            let mut nodes: *const *const c_void = std::ptr::null();
            let mut n = 0usize;
            check((api.ep_assigned_subgraph_get_nodes)(
                sub, &mut nodes, &mut n,
            ))?;
            let name = CStr::from_ptr(name).to_string_lossy().into_owned();
            match per_ep.iter_mut().find(|(ep, _)| *ep == name) {
                Some((_, total)) => *total += n,
                None => per_ep.push((name, n)),
            }
        }
        Some(per_ep)
    }
}

/// The provider holding the graph, from per-provider node counts: CUDA if it holds any node.
pub(crate) fn dominant(nodes: &[(String, usize)], device_id: i32) -> Provider {
    let holds = |ep: &str| nodes.iter().any(|(name, n)| name == ep && *n > 0);
    if holds("CUDAExecutionProvider") {
        Provider::Cuda { device_id }
    } else if holds("CPUExecutionProvider") || nodes.is_empty() {
        Provider::Cpu
    } else {
        nodes
            .iter()
            .max_by_key(|(_, n)| *n)
            .map_or(Provider::Cpu, |(name, _)| Provider::Other(name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dominant_provider_prefers_any_cuda_placement() {
        let cpu_only = vec![("CPUExecutionProvider".to_owned(), 5)];
        assert_eq!(dominant(&cpu_only, 0), Provider::Cpu);
        let mixed = vec![
            ("CPUExecutionProvider".to_owned(), 5),
            ("CUDAExecutionProvider".to_owned(), 1),
        ];
        assert_eq!(dominant(&mixed, 1), Provider::Cuda { device_id: 1 });
        let empty_cuda = vec![
            ("CUDAExecutionProvider".to_owned(), 0),
            ("CPUExecutionProvider".to_owned(), 3),
        ];
        assert_eq!(dominant(&empty_cuda, 0), Provider::Cpu);
    }

    #[test]
    fn device_config_parses() {
        let d: Device = serde_json::from_str(r#"{"kind":"cuda","device_id":1}"#).expect("cuda");
        assert_eq!(d, Device::Cuda { device_id: 1 });
        assert_eq!(
            "CUDA:1".parse::<Device>(),
            Ok(Device::Cuda { device_id: 1 })
        );
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert!("cuda:-1".parse::<Device>().is_err() && "tpu".parse::<Device>().is_err());
        assert_eq!(d.to_string(), "CUDA:1");
        assert!(serde_json::from_str::<Device>(r#"{"kind":"tpu"}"#).is_err());
    }
}
