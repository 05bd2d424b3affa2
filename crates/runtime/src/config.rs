//! Options for loading a model, validated once before anything is read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::checksum::{Checksum, Digest};
use crate::device::{Device, Fallback};
use crate::error::{Error, Result};

/// Default cap on the elements of one input tensor: 64 Mi elements (256 MiB of f32).
pub const DEFAULT_MAX_INPUT_ELEMENTS: usize = 64 << 20;

/// ONNX Runtime graph optimisation level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizationLevel {
    /// No graph optimisation.
    Disable,
    /// Constant folding and redundant-node elimination.
    Basic,
    /// Basic plus node fusions.
    Extended,
    /// Everything, including layout optimisations. The default.
    #[default]
    All,
}

/// ONNX Runtime session settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Threads for parallelism inside one operator. Default 0: ONNX Runtime's choice (one
    /// per physical core). With several model instances on one machine, set instances ×
    /// threads ≤ cores, or they fight for the CPU.
    pub intra_op_threads: usize,
    /// Threads for running independent operators in parallel (only with
    /// `parallel_execution`). Default 0: ONNX Runtime's choice.
    pub inter_op_threads: usize,
    /// Run independent branches of the graph concurrently. Default false: most serving
    /// graphs are chains, where this only adds overhead.
    pub parallel_execution: bool,
    /// Graph optimisation level. Default `all`.
    pub optimization_level: OptimizationLevel,
    /// Whether intra-op threads spin while waiting for work. Default unset (ONNX Runtime:
    /// spin). Spinning cuts latency and burns CPU when idle; turn it off when the CPU is
    /// shared with other work.
    pub intra_op_spinning: Option<bool>,
    /// Same for inter-op threads. Default unset (ONNX Runtime: spin).
    pub inter_op_spinning: Option<bool>,
    /// With a GPU provider, fail the load if any node would fall back to the CPU provider.
    /// Default false.
    pub disable_cpu_fallback: bool,
    /// With the CUDA provider, whether float32 matrix products and convolutions may use
    /// TF32 tensor cores. Default unset (ONNX Runtime: yes). TF32 keeps 10 mantissa bits, so
    /// outputs can differ from the CPU's in the third significant digit; set `false` where
    /// results must match the CPU closely, at some speed cost.
    pub cuda_tf32: Option<bool>,
}

/// Largest thread count accepted; more is a typo, not a machine.
const MAX_THREADS: usize = 1024;

impl SessionConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field.
    pub fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("intra_op_threads", self.intra_op_threads),
            ("inter_op_threads", self.inter_op_threads),
        ] {
            if value > MAX_THREADS {
                return Err(Error::InvalidConfig {
                    field,
                    reason: format!("{value} is over the maximum of {MAX_THREADS}"),
                });
            }
        }
        Ok(())
    }
}

/// How to load one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelOptions {
    /// Name used in errors, logs and metrics. Default: the file stem.
    pub name: Option<String>,
    /// Expected digest. Default [`Checksum::Manifest`]: verification is on unless waived.
    pub checksum: Checksum,
    /// Where to run. Default [`Device::Cpu`].
    pub device: Device,
    /// What a failed CUDA registration does for [`Device::Cuda`]. Default [`Fallback::Fail`].
    pub fallback: Fallback,
    /// ONNX Runtime session settings.
    pub session: SessionConfig,
    /// Cap on the elements of any one input tensor of a request. Default
    /// [`DEFAULT_MAX_INPUT_ELEMENTS`].
    pub max_input_elements: usize,
    /// Expected digests of the model's external data files, by the location the model names
    /// (relative to the model's directory). Needed with [`Checksum::Sha256`] for a model that
    /// has external data; with [`Checksum::Manifest`] the manifest supplies them. Default empty.
    pub external_data: BTreeMap<String, Digest>,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            name: None,
            checksum: Checksum::default(),
            device: Device::default(),
            fallback: Fallback::default(),
            session: SessionConfig::default(),
            max_input_elements: DEFAULT_MAX_INPUT_ELEMENTS,
            external_data: BTreeMap::new(),
        }
    }
}

impl ModelOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the model name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets where the expected digest comes from.
    pub fn with_checksum(mut self, checksum: Checksum) -> Self {
        self.checksum = checksum;
        self
    }

    /// Pins the sha256 of one external data file, by the location the model names.
    pub fn with_external_data_checksum(
        mut self,
        location: impl Into<String>,
        digest: Digest,
    ) -> Self {
        self.external_data.insert(location.into(), digest);
        self
    }

    /// Sets the device.
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// Sets the fallback policy for [`Device::Cuda`].
    pub fn with_fallback(mut self, fallback: Fallback) -> Self {
        self.fallback = fallback;
        self
    }

    /// Sets the session settings.
    pub fn with_session(mut self, session: SessionConfig) -> Self {
        self.session = session;
        self
    }

    /// Sets the per-input element cap.
    pub fn with_max_input_elements(mut self, limit: usize) -> Self {
        self.max_input_elements = limit;
        self
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.max_input_elements == 0 {
            return Err(Error::InvalidConfig {
                field: "max_input_elements",
                reason: "must be at least 1".into(),
            });
        }
        if let Device::Cuda { device_id } = self.device {
            if device_id < 0 {
                return Err(Error::InvalidConfig {
                    field: "device_id",
                    reason: format!("{device_id} is negative"),
                });
            }
        }
        if let Some(name) = &self.name {
            if name.is_empty() {
                return Err(Error::InvalidConfig {
                    field: "name",
                    reason: "must not be empty".into(),
                });
            }
        }
        self.session.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_values_name_their_field() {
        let field = |o: ModelOptions| match o.validate() {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        assert_eq!(
            field(ModelOptions::new().with_max_input_elements(0)),
            "max_input_elements"
        );
        assert_eq!(
            field(ModelOptions::new().with_device(Device::Cuda { device_id: -1 })),
            "device_id"
        );
        assert_eq!(field(ModelOptions::new().with_name("")), "name");
        let threads = SessionConfig {
            intra_op_threads: 5000,
            ..Default::default()
        };
        assert_eq!(
            field(ModelOptions::new().with_session(threads)),
            "intra_op_threads"
        );
        assert!(ModelOptions::new().validate().is_ok());
    }

    #[test]
    fn session_config_rejects_unknown_fields() {
        let ok: SessionConfig =
            serde_json::from_str(r#"{"intra_op_threads":2,"optimization_level":"basic"}"#)
                .expect("parse");
        assert_eq!(
            (ok.intra_op_threads, ok.optimization_level),
            (2, OptimizationLevel::Basic)
        );
        assert!(serde_json::from_str::<SessionConfig>(r#"{"intra_threads":2}"#).is_err());
    }
}
