//! The admin operations (the v2 repository extension's `load` and `unload`): explicit
//! requests that override the watcher's own decisions, under the same scan lock.

use std::time::Instant;

use super::{published, LoadOutcome, Repository, ScanReport};
use crate::error::Result;
use crate::layout;

impl Repository {
    /// The admin load: lifts an [`Repository::unload`] of `name`, forgets its failure
    /// records, and loads the version `current` names right now (or confirms it serves),
    /// one at a time with scans. With nothing serving after a failure, the last good version
    /// is served meanwhile, but the failure is still returned.
    ///
    /// # Errors
    /// [`crate::Error::ModelNotFound`] if `<root>/<name>` has no `current` link to a version
    /// directory; otherwise the version's load error (the previous version, if any, serves
    /// on, and the watcher retries after the backoff).
    pub fn load(&self, name: &str) -> Result<LoadOutcome> {
        if layout::check_name("model", name).is_err() {
            return Err(self.not_found(name, "not a valid model directory name"));
        }
        let mut st = self.lock();
        let model_dir = self.config.root.join(name);
        let Some(current) = published::current(&model_dir) else {
            return Err(self.not_found(
                name,
                if model_dir.is_dir() {
                    super::unpublished::diagnose(&model_dir, name).reason
                } else {
                    self.unpublished_reason(name)
                        .unwrap_or_else(|| "no such model directory".to_owned())
                },
            ));
        };
        st.missing_since.remove(name);
        self.unlisted_mut().remove(name);
        st.failures.clear(name);
        st.observe(name, &current);
        if let Some(e) = self.index_mut().get_mut(name) {
            e.unloaded = None;
        }
        if self.is_serving(&st, name, &current) {
            return Ok(LoadOutcome::AlreadyServing(current.version));
        }
        let mut report = ScanReport::default();
        self.bring_up(&mut st, name, &current, Instant::now(), &mut report)?;
        tracing::info!(model = name, version = %current, "loaded on an admin request");
        Ok(LoadOutcome::Loaded(current.version))
    }

    /// The admin unload: drains and unloads `name`, and keeps it unloaded across scans until
    /// [`Repository::load`] or a new `current` (another version or manifest). The model stays
    /// listed, in state `Unloaded`, and no longer counts against [`Repository::all_ready`].
    /// Blocks while the serving version drains (its `drain_timeout_ms` at most).
    ///
    /// # Errors
    /// [`crate::Error::ModelNotFound`] if the model is neither served nor published.
    pub fn unload(&self, name: &str) -> Result<()> {
        let mut st = self.lock();
        let current = layout::check_name("model", name)
            .ok()
            .and_then(|()| published::current(&self.config.root.join(name)));
        if self.get(name).is_none() && current.is_none() {
            return Err(self.not_found(name, "no such model is served or published"));
        }
        let handle = self.handle_or_new(name);
        if let Some(e) = self.index_mut().get_mut(name) {
            // Marked before draining, so readiness ignores it from the start.
            e.unloaded = Some(current);
        }
        handle.shutdown();
        st.serving.remove(name);
        tracing::info!(
            model = name,
            "unloaded on an admin request; stays unloaded until loaded or `current` moves"
        );
        Ok(())
    }
}
