//! Model options: verification, device, session and batching settings, set one at a time.
//!
//! Every setting has a key (`kiln_model_options_set(options, "max_batch_size", "32")`); the
//! typed setters are shorthands that go through the same code. Values are parsed when set
//! (a bad number fails at once, naming the key); combinations are validated at load.

use std::ffi::c_char;

use runtime::{BatchConfig, Checksum, Fallback, ModelOptions};

use crate::status::{
    borrow_mut, free_handle, give, guard, out_ptr, text, Failure, FfiResult, KilnStatus,
};

/// Options for `kiln_model_load`. Defaults: verify against `kiln-manifest.json` beside the
/// model, CPU, version label "1", batching with kiln's defaults (max batch 64, no queue
/// delay, queue of 1024 requests, warm-up on).
pub struct KilnModelOptions {
    pub(crate) model: ModelOptions,
    pub(crate) batch: BatchConfig,
    pub(crate) version: String,
}

impl Default for KilnModelOptions {
    fn default() -> Self {
        Self {
            model: ModelOptions::new(),
            batch: BatchConfig::default(),
            version: "1".to_owned(),
        }
    }
}

/// The keys `kiln_model_options_set` accepts, for error messages.
const KEYS: &str =
    "version, sha256, external_data_sha256, verify, device, fallback, intra_op_threads, \
     inter_op_threads, cuda_tf32, max_input_elements, instances, max_batch_size, \
     preferred_batch_sizes, max_queue_delay_us, max_queue_requests, max_queue_bytes, \
     default_timeout_ms, priority_levels, warmup, drain_timeout_ms, spin_us";

impl KilnModelOptions {
    /// Applies one key/value setting.
    pub(crate) fn set(&mut self, key: &str, value: &str) -> FfiResult {
        let value = value.trim();
        let b = &mut self.batch;
        let s = &mut self.model.session;
        match key {
            "version" => {
                if value.is_empty() {
                    return Err(Failure::invalid("option `version` must not be empty"));
                }
                self.version = value.to_owned();
            }
            "sha256" => {
                let digest = value.parse().map_err(|e: runtime::Error| {
                    Failure::invalid(format!("option `sha256`: {e}"))
                })?;
                self.model.checksum = Checksum::Sha256(digest);
            }
            "external_data_sha256" => {
                let (location, hex) = value.split_once('=').ok_or_else(|| {
                    bad(
                        key,
                        value,
                        "`LOCATION=SHA256` (the location as the model names it)",
                    )
                })?;
                let digest = hex.trim().parse().map_err(|e: runtime::Error| {
                    Failure::invalid(format!("option `external_data_sha256`: {e}"))
                })?;
                self.model = std::mem::take(&mut self.model)
                    .with_external_data_checksum(location.trim(), digest);
            }
            "verify" => {
                self.model.checksum = match value {
                    "manifest" => Checksum::Manifest,
                    "skip" => Checksum::Skip,
                    _ => return Err(bad(key, value, "`manifest` or `skip` (or set `sha256`)")),
                }
            }
            "device" => {
                self.model.device = value
                    .parse()
                    .map_err(|e: String| Failure::invalid(format!("option `device`: {e}")))?
            }
            "fallback" => {
                self.model.fallback = match value {
                    "fail" => Fallback::Fail,
                    "cpu" => Fallback::Cpu,
                    _ => return Err(bad(key, value, "`fail` or `cpu`")),
                }
            }
            "intra_op_threads" => s.intra_op_threads = number(key, value)?,
            "inter_op_threads" => s.inter_op_threads = number(key, value)?,
            "cuda_tf32" => s.cuda_tf32 = Some(boolean(key, value)?),
            "max_input_elements" => self.model.max_input_elements = number(key, value)?,
            "instances" => b.instances = number(key, value)?,
            "max_batch_size" => b.max_batch_size = number(key, value)?,
            "preferred_batch_sizes" => {
                b.preferred_batch_sizes = value
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(|v| number(key, v))
                    .collect::<FfiResult<_>>()?;
            }
            "max_queue_delay_us" => b.max_queue_delay_us = number(key, value)?,
            "max_queue_requests" => b.max_queue_requests = number(key, value)?,
            "max_queue_bytes" => b.max_queue_bytes = number(key, value)?,
            "default_timeout_ms" => b.default_timeout_ms = number(key, value)?,
            "priority_levels" => b.priority_levels = number(key, value)?,
            "warmup" => b.warmup = boolean(key, value)?,
            "drain_timeout_ms" => b.drain_timeout_ms = number(key, value)?,
            "spin_us" => b.spin_us = number(key, value)?,
            _ => {
                return Err(Failure::invalid(format!(
                    "unknown option `{key}`; the keys are: {KEYS}"
                )))
            }
        }
        Ok(())
    }
}

fn bad(key: &str, value: &str, expected: &str) -> Failure {
    Failure::invalid(format!("option `{key}`: {value:?} is not {expected}"))
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> FfiResult<T> {
    value
        .parse()
        .map_err(|_| bad(key, value, "a non-negative integer in range"))
}

fn boolean(key: &str, value: &str) -> FfiResult<bool> {
    match value {
        "true" | "1" | "on" => Ok(true),
        "false" | "0" | "off" => Ok(false),
        _ => Err(bad(key, value, "a boolean (true/false)")),
    }
}

/// Creates options with the defaults and writes the handle to `out`.
///
/// Ownership: free with `kiln_model_options_free` (a model does not keep them: they can be
/// freed right after `kiln_model_load`, or reused for other loads). Thread-safety: setters
/// must not run concurrently on one options handle.
///
/// # Safety
/// `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_model_options_create(out: *mut *mut KilnModelOptions) -> KilnStatus {
    guard(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: checked writable.
        unsafe { give(out, KilnModelOptions::default()) };
        Ok(())
    })
}

/// Frees options. NULL does nothing.
///
/// # Safety
/// `options` is NULL or a handle from `kiln_model_options_create` not freed before.
#[no_mangle]
pub unsafe extern "C" fn kiln_model_options_free(options: *mut KilnModelOptions) {
    // SAFETY: forwarded contract.
    unsafe { free_handle(options) }
}

/// Sets one option by key. Keys and values (all given as text):
///
/// - `version`: label of the loaded version (default "1").
/// - `sha256`: expected SHA-256 of the model file, 64 hex digits; the model loads only if it
///   matches.
/// - `external_data_sha256`: `LOCATION=SHA256`, the expected SHA-256 of one external data
///   file, by the location the model names (relative to its directory); set once per file.
///   A model with external data loads only when every file is pinned so or listed in the
///   manifest.
/// - `verify`: `manifest` (default: the digest comes from `kiln-manifest.json` beside the
///   model) or `skip` (no verification; logged as a warning).
/// - `device`: `cpu` (default), `auto`, `cuda` or `cuda:N`. `fallback`: `fail` (default) or
///   `cpu`, for when CUDA cannot be used.
/// - `intra_op_threads`, `inter_op_threads`: ONNX Runtime threads (0 = its choice).
/// - `cuda_tf32`: `true`/`false`, TF32 math on CUDA (default: ONNX Runtime's, on).
/// - `max_input_elements`: cap on the elements of one input tensor of a request.
/// - Batching: `instances`, `max_batch_size`, `preferred_batch_sizes` (comma-separated),
///   `max_queue_delay_us`, `max_queue_requests`, `max_queue_bytes`, `default_timeout_ms`,
///   `priority_levels`, `warmup` (`true`/`false`), `drain_timeout_ms`, `spin_us`.
///
/// Errors: `KILN_STATUS_INVALID_ARGUMENT` for an unknown key (the message lists the keys) or
/// a value that does not parse.
///
/// # Safety
/// `options` is NULL or a live options handle; `key` and `value` are NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn kiln_model_options_set(
    options: *mut KilnModelOptions,
    key: *const c_char,
    value: *const c_char,
) -> KilnStatus {
    guard(|| {
        // SAFETY: NULL or live and unshared by contract.
        let options = unsafe { borrow_mut(options, "options") }?;
        // SAFETY: NUL-terminated by contract.
        let key = unsafe { text(key, "key") }?;
        // SAFETY: as above.
        let value = unsafe { text(value, "value") }?;
        options.set(key, value)
    })
}

/// Applies one typed setter through the key/value path.
fn set_typed(options: *mut KilnModelOptions, key: &str, value: &str) -> KilnStatus {
    guard(|| {
        // SAFETY: each typed setter's contract: NULL or a live, unshared options handle.
        let options = unsafe { borrow_mut(options, "options") }?;
        options.set(key, value)
    })
}

/// Sets the expected SHA-256 (64 hex digits); same as key `sha256`.
///
/// # Safety
/// `options` is NULL or a live options handle; `sha256_hex` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn kiln_model_options_set_sha256(
    options: *mut KilnModelOptions,
    sha256_hex: *const c_char,
) -> KilnStatus {
    // SAFETY: NUL-terminated by contract.
    match unsafe { text(sha256_hex, "sha256_hex") } {
        Ok(hex) => set_typed(options, "sha256", hex),
        Err(e) => guard(|| Err(e)),
    }
}

/// Runs the model on CUDA device `device_id` (negative: the CPU); same as key `device`.
///
/// # Safety
/// `options` is NULL or a live options handle.
#[no_mangle]
pub unsafe extern "C" fn kiln_model_options_set_cuda(
    options: *mut KilnModelOptions,
    device_id: i32,
) -> KilnStatus {
    let device = if device_id < 0 {
        "cpu".to_owned()
    } else {
        format!("cuda:{device_id}")
    };
    set_typed(options, "device", &device)
}

/// Sets the most rows in one batch; same as key `max_batch_size`.
///
/// # Safety
/// `options` is NULL or a live options handle.
#[no_mangle]
pub unsafe extern "C" fn kiln_model_options_set_max_batch_size(
    options: *mut KilnModelOptions,
    max_batch_size: usize,
) -> KilnStatus {
    set_typed(options, "max_batch_size", &max_batch_size.to_string())
}

/// Sets how long a batch may wait for more requests, in µs; same as key
/// `max_queue_delay_us`.
///
/// # Safety
/// `options` is NULL or a live options handle.
#[no_mangle]
pub unsafe extern "C" fn kiln_model_options_set_max_queue_delay_us(
    options: *mut KilnModelOptions,
    delay_us: u64,
) -> KilnStatus {
    set_typed(options, "max_queue_delay_us", &delay_us.to_string())
}

/// Sets the number of model instances (worker threads with a session each); same as key
/// `instances`.
///
/// # Safety
/// `options` is NULL or a live options handle.
#[no_mangle]
pub unsafe extern "C" fn kiln_model_options_set_instances(
    options: *mut KilnModelOptions,
    instances: usize,
) -> KilnStatus {
    set_typed(options, "instances", &instances.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_bad_values_name_the_key() {
        let mut o = KilnModelOptions::default();
        o.set("max_batch_size", "32").expect("set");
        o.set("preferred_batch_sizes", "8, 16,32").expect("set");
        o.set("device", "cuda:1").expect("set");
        o.set("warmup", "false").expect("set");
        assert_eq!(o.batch.max_batch_size, 32);
        assert_eq!(o.batch.preferred_batch_sizes, vec![8, 16, 32]);
        assert_eq!(o.model.device, runtime::Device::Cuda { device_id: 1 });
        assert!(!o.batch.warmup);
        let e = o.set("max_batch_size", "-1").expect_err("negative");
        assert!(e.message.contains("max_batch_size"), "{}", e.message);
        let e = o.set("max_batch", "1").expect_err("unknown");
        assert!(
            e.message.contains("unknown option `max_batch`"),
            "{}",
            e.message
        );
        let e = o.set("sha256", "xyz").expect_err("bad digest");
        assert!(e.message.contains("sha256"), "{}", e.message);
        assert!(o.set("device", "tpu").is_err());
    }
}
