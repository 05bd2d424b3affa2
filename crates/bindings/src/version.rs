// The ABI version, shared by the library and build.rs (which sets the soname from it).

/// ABI major version: bumped on any incompatible change (it is the soname's number).
pub const KILN_ABI_MAJOR: u32 = 0;
/// ABI minor version: bumped when functions, status codes or dtype codes are added.
pub const KILN_ABI_MINOR: u32 = 3;
