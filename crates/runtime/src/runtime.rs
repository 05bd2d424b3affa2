//! Finding, checking and loading the ONNX Runtime shared library, once per process.
//!
//! `ort` is built with `load-dynamic`, so nothing is linked or downloaded at build time; the
//! library is found at run time in this order:
//!
//! 1. [`RuntimeConfig::library_path`], if set. An explicit path is a decision, not a hint:
//!    when it fails, nothing else is tried.
//! 2. `ORT_DYLIB_PATH` (a file).
//! 3. `KILN_ORT_DIR` (a directory holding `libonnxruntime.so` or `libonnxruntime.so.1.*`).
//! 4. `lib/` next to the running executable.
//! 5. The system loader (`libonnxruntime.so`, `libonnxruntime.so.1` on the usual search path).
//!
//! Each candidate is opened and checked here (it must export `OrtGetApiBase` and be ONNX
//! Runtime 1.23 or newer) before `ort` sees it, because `ort` panics if one of its errors is
//! created before a library is loaded. Failures are collected into
//! [`Error::LibraryNotFound`], which lists every attempt.

use std::ffi::{CStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, LibraryAttempt, Result};

/// Oldest ONNX Runtime minor version accepted (the `api-23` feature of `ort`).
pub const MIN_ORT_MINOR: u32 = 23;

/// How to find ONNX Runtime.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Path of `libonnxruntime.so` to use. Default: unset, search as described in the module
    /// docs. When set, only this file is tried.
    pub library_path: Option<PathBuf>,
    /// One ONNX Runtime thread pool shared by every session of the process, instead of one
    /// pool per session. Default: unset (per-session pools, sized by each model's
    /// `SessionConfig`). Sharing keeps many models or instances from oversubscribing the
    /// CPU; with it set, the sessions' own thread settings are ignored.
    pub global_thread_pool: Option<ThreadPoolConfig>,
    /// Pin glibc's malloc thresholds when the library is first loaded, so that hot swaps do
    /// not grow resident memory (see [`crate::memory`]). Default: true. A `MALLOC_*`
    /// variable or `glibc.malloc` tunable in the environment wins either way.
    pub malloc_tuning: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            library_path: None,
            global_thread_pool: None,
            malloc_tuning: true,
        }
    }
}

/// The process-wide ONNX Runtime thread pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThreadPoolConfig {
    /// Intra-op threads. Default 0: ONNX Runtime's choice (one per physical core).
    pub intra_op_threads: usize,
    /// Inter-op threads. Default 0: ONNX Runtime's choice.
    pub inter_op_threads: usize,
    /// Whether idle pool threads spin. Default unset (ONNX Runtime: spin).
    pub spinning: Option<bool>,
}

/// The ONNX Runtime library this process uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryInfo {
    /// The file that was loaded (a bare name when the system loader found it).
    pub path: PathBuf,
    /// Which rule of the search found it (`config`, `ORT_DYLIB_PATH`, ...).
    pub source: &'static str,
    /// ONNX Runtime's own version string, e.g. `1.31.1`.
    pub version: String,
    /// The minor version number (31 for 1.31.1).
    pub minor: u32,
}

struct Loaded {
    info: LibraryInfo,
    env: ort::environment::Environment,
    /// The library, kept open for the life of the process (also used for API entries newer
    /// than the `ort` bindings, see `ep`).
    lib: libloading::Library,
}

static LOADED: OnceLock<Loaded> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// A handle to the loaded ONNX Runtime and its environment. Cheap to clone; every clone
/// refers to the one library of the process.
#[derive(Clone, Copy)]
pub struct Runtime {
    loaded: &'static Loaded,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("library", &self.loaded.info)
            .finish()
    }
}

impl Runtime {
    /// Loads ONNX Runtime (first call) or returns the already loaded one.
    ///
    /// # Errors
    /// [`Error::LibraryNotFound`] listing every location tried;
    /// [`Error::LibraryAlreadyLoaded`] if `config.library_path` names a different file than
    /// the one already loaded; [`Error::Environment`] if ONNX Runtime cannot start.
    pub fn new(config: &RuntimeConfig) -> Result<Self> {
        // A std Mutex: nothing awaits while it is held, and it only serialises first loads.
        let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(loaded) = LOADED.get() {
            if let Some(requested) = &config.library_path {
                if requested != &loaded.info.path {
                    return Err(Error::LibraryAlreadyLoaded {
                        loaded: loaded.info.path.clone(),
                        requested: requested.clone(),
                    });
                }
            }
            return Ok(Self { loaded });
        }
        // Before ONNX Runtime allocates anything, so all of its blocks follow the setting.
        if config.malloc_tuning {
            let tuning = crate::memory::tune();
            tracing::debug!(?tuning, "malloc thresholds");
        }
        let candidates = candidates(
            config.library_path.as_deref(),
            std::env::var_os("ORT_DYLIB_PATH"),
            std::env::var_os("KILN_ORT_DIR"),
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|d| d.join("lib"))),
        );
        let mut attempts = Vec::new();
        for (source, path) in candidates {
            match probe(&path) {
                Ok((lib, version, minor)) => {
                    ort::init_from(&path).map_err(|e| Error::LibraryNotFound {
                        attempts: vec![LibraryAttempt {
                            source,
                            path: path.clone(),
                            reason: e.to_string(),
                        }],
                    })?;
                    let env = environment(config.global_thread_pool.as_ref())
                        .map_err(|source| Error::Environment { source })?;
                    let info = LibraryInfo {
                        path,
                        source,
                        version,
                        minor,
                    };
                    tracing::info!(path = %info.path.display(), source, version = %info.version, "loaded ONNX Runtime");
                    let loaded = LOADED.get_or_init(|| Loaded { info, env, lib });
                    return Ok(Self { loaded });
                }
                Err(reason) => {
                    tracing::debug!(path = %path.display(), source, %reason, "ONNX Runtime candidate rejected");
                    attempts.push(LibraryAttempt {
                        source,
                        path,
                        reason,
                    });
                }
            }
        }
        Err(Error::LibraryNotFound { attempts })
    }

    /// The library in use.
    pub fn library(&self) -> &LibraryInfo {
        &self.loaded.info
    }

    pub(crate) fn environment(&self) -> &ort::environment::Environment {
        &self.loaded.env
    }

    pub(crate) fn raw_library(&self) -> &libloading::Library {
        &self.loaded.lib
    }
}

/// The ONNX Runtime environment, with the shared thread pool if configured.
fn environment(pool: Option<&ThreadPoolConfig>) -> ort::Result<ort::environment::Environment> {
    let mut builder = ort::init().with_name("kiln").with_telemetry(false);
    if let Some(p) = pool {
        let mut options = ort::environment::GlobalThreadPoolOptions::default();
        if p.intra_op_threads > 0 {
            options = options.with_intra_threads(p.intra_op_threads)?;
        }
        if p.inter_op_threads > 0 {
            options = options.with_inter_threads(p.inter_op_threads)?;
        }
        if let Some(spin) = p.spinning {
            options = options.with_spin_control(spin)?;
        }
        builder = builder.with_global_thread_pool(options);
    }
    builder.build()
}

/// The ordered candidate list; pure, so the order is unit-tested without touching the process
/// environment.
fn candidates(
    config: Option<&Path>,
    ort_dylib_path: Option<OsString>,
    kiln_ort_dir: Option<OsString>,
    exe_lib_dir: Option<PathBuf>,
) -> Vec<(&'static str, PathBuf)> {
    // Relative paths are resolved against the working directory now, so the path reported
    // (and handed to `ort`, which would resolve it against the executable) is the one probed.
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    if let Some(path) = config {
        return vec![("config library_path", absolute(path))];
    }
    let mut out = Vec::new();
    if let Some(p) = ort_dylib_path.filter(|p| !p.is_empty()) {
        out.push(("ORT_DYLIB_PATH", absolute(Path::new(&p))));
    }
    if let Some(d) = kiln_ort_dir.filter(|d| !d.is_empty()) {
        out.push(("KILN_ORT_DIR", library_in(&absolute(Path::new(&d)))));
    }
    if let Some(d) = exe_lib_dir {
        out.push(("lib/ next to the executable", library_in(&d)));
    }
    out.push(("system loader", PathBuf::from("libonnxruntime.so")));
    out.push(("system loader", PathBuf::from("libonnxruntime.so.1")));
    out
}

/// `dir/libonnxruntime.so` if present, else the newest `libonnxruntime.so.1.*` in `dir`,
/// else `dir/libonnxruntime.so` (so the error names the expected file).
fn library_in(dir: &Path) -> PathBuf {
    let plain = dir.join("libonnxruntime.so");
    if plain.exists() {
        return plain;
    }
    let versioned = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name.strip_prefix("libonnxruntime.so.")?;
            let key: Vec<u32> = rest
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            Some((key, e.path()))
        })
        .max();
    versioned.map_or(plain, |(_, path)| path)
}

/// Opens `path` and checks that it is ONNX Runtime ≥ 1.[`MIN_ORT_MINOR`]. Returns the open
/// library, its version string and minor version, or why it is unusable.
fn probe(path: &Path) -> std::result::Result<(libloading::Library, String, u32), String> {
    if path.is_absolute() && !path.exists() {
        return Err("no such file".to_owned());
    }
    // SAFETY: loading a shared library runs its initialisers; ONNX Runtime's are sound to run
    // on any thread, and the symbol checked next tells us it is ONNX Runtime.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| format!("cannot load: {e}"))?;
    let version = version_of(&lib)?;
    let minor =
        parse_minor(&version).ok_or_else(|| format!("unrecognised version string {version:?}"))?;
    if minor < MIN_ORT_MINOR {
        return Err(format!(
            "ONNX Runtime {version} is too old: kiln needs 1.{MIN_ORT_MINOR} or newer"
        ));
    }
    Ok((lib, version, minor))
}

/// ONNX Runtime's version string, read through `OrtGetApiBase`.
fn version_of(lib: &libloading::Library) -> std::result::Result<String, String> {
    // SAFETY: `OrtGetApiBase` has this signature in every ONNX Runtime release.
    let get_base = unsafe {
        lib.get::<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase>(b"OrtGetApiBase\0")
    }
    .map_err(|_| "does not export OrtGetApiBase: not an ONNX Runtime library".to_owned())?;
    // SAFETY: the function takes no arguments and returns a pointer to a static table.
    let base = unsafe { get_base() };
    if base.is_null() {
        return Err("OrtGetApiBase returned null".to_owned());
    }
    // SAFETY: `base` is non-null and points at ONNX Runtime's static `OrtApiBase`; the version
    // string it returns is a static NUL-terminated string.
    let version = unsafe { CStr::from_ptr(((*base).GetVersionString)()) };
    version
        .to_str()
        .map(str::to_owned)
        .map_err(|_| "version string is not UTF-8".to_owned())
}

fn parse_minor(version: &str) -> Option<u32> {
    let mut parts = version.split('.');
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    (major == 1).then_some(minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_config_path_is_the_only_candidate() {
        let c = candidates(
            Some(Path::new("/x/lib.so")),
            Some("/env.so".into()),
            Some("/d".into()),
            None,
        );
        assert_eq!(c, vec![("config library_path", PathBuf::from("/x/lib.so"))]);
    }

    #[test]
    fn search_order_is_env_file_env_dir_exe_lib_system() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("libonnxruntime.so.1.9.0"), b"").expect("write");
        std::fs::write(dir.path().join("libonnxruntime.so.1.31.1"), b"").expect("write");
        let c = candidates(
            None,
            Some("/env.so".into()),
            Some(dir.path().into()),
            Some(PathBuf::from("/exe/lib")),
        );
        let sources: Vec<_> = c.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            sources,
            [
                "ORT_DYLIB_PATH",
                "KILN_ORT_DIR",
                "lib/ next to the executable",
                "system loader",
                "system loader"
            ]
        );
        assert_eq!(
            c[1].1,
            dir.path().join("libonnxruntime.so.1.31.1"),
            "newest versioned file wins"
        );
        assert_eq!(c[2].1, PathBuf::from("/exe/lib/libonnxruntime.so"));
        let empty = candidates(None, Some("".into()), None, None);
        assert_eq!(empty.len(), 2, "empty variables are ignored");
    }

    #[test]
    fn probe_explains_each_failure() {
        assert_eq!(
            probe(Path::new("/nonexistent/libonnxruntime.so"))
                .err()
                .as_deref(),
            Some("no such file")
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = dir.path().join("libjunk.so");
        std::fs::write(&junk, b"not an ELF file").expect("write");
        assert!(probe(&junk)
            .err()
            .is_some_and(|e| e.starts_with("cannot load")));
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_minor("1.31.1"), Some(31));
        assert_eq!(parse_minor("1.23.0-dev"), Some(23));
        assert_eq!(parse_minor("2.0.0"), None);
        assert_eq!(parse_minor("garbage"), None);
    }
}
