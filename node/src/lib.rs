#![doc = include_str!("../README.md")]

pub mod build_cmd;
pub mod cli;
pub mod inspect;
pub mod keys;
