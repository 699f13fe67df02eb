//! The Tidegate plugin SDK.
//!
//! The WIT contract, the Rust bindings and the native test harness arrive with the
//! plugin-platform work; this crate exists now so the workspace has its final shape.
