#![doc = include_str!("../README.md")]

pub mod buildinfo;
pub mod ciconfig;
pub mod db;
pub mod desc;
pub mod package;
pub mod pkginfo;
pub mod sign;
pub mod srcinfo;
mod text;
pub mod version;

/// Synthetic packages for tests and benchmarks (cargo feature `testutil`).
#[cfg(feature = "testutil")]
pub use package::testutil;
