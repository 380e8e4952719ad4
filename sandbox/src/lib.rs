#![doc = include_str!("../README.md")]

pub mod artifact;
pub mod build;
pub mod bwrap;
pub mod interfere;
pub mod overlay;
pub mod preflight;
pub mod profile;
pub mod supervise;

pub use artifact::Artifact;
pub use build::{BuildConfig, BuildResult, Builder, Phase, source_cache_key};
pub use bwrap::BwrapCommand;
pub use preflight::{PreflightError, preflight, preflight_chroot};
pub use profile::{ChrootConfig, PacmanRepo, Profile};
pub use supervise::{LogCollector, Outcome, RunOptions, RunResult, run};

/// uid of the build user inside the sandbox.
pub const BUILD_UID: u32 = 1000;
/// gid of the build user inside the sandbox.
pub const BUILD_GID: u32 = 1000;
