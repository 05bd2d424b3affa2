//! `kiln-ffi`: the C ABI of the kiln runtime (`libkiln` + `include/kiln.h`).
//!
//! Skeleton: the C ABI issue fills in handles, status codes and the exported functions. Today
//! it exposes the ABI version constants the header will carry.

/// ABI major version: bumped on any incompatible change.
pub const KILN_ABI_MAJOR: u32 = 0;
/// ABI minor version: bumped when functions are added.
pub const KILN_ABI_MINOR: u32 = 1;
