#![doc = include_str!("../README.md")]

pub mod build_cmd;
pub mod cli;
pub mod core;
pub mod ingest;
pub mod inspect;
pub mod keys;
pub mod state;
pub mod store;
