//! The command-line surface (see DESIGN.md): clap definitions and dispatch.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::keys::{NodeKey, default_key_path};

/// pacmesh: a peer-to-peer build mesh for Arch Linux packages.
///
/// Exit codes: 0 success, 1 failure (a one-line reason on stderr), 2 usage error.
#[derive(Debug, Parser)]
#[command(name = "pacmesh", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create and show node keys.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate an ed25519 secret key (mode 0600; never overwrites); prints the public key and node id.
    Gen {
        /// Where to write the key [default: $XDG_DATA_HOME/pacmesh/node.key].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the public key and libp2p node id (PeerId) of a key.
    Show(KeyArg),
    /// Print the ASCII-armored OpenPGP public key for `pacman-key --add`.
    Openpgp {
        #[command(flatten)]
        key: KeyArg,
        /// OpenPGP user id [default: "pacmesh node <PEERID@pacmesh.invalid>"].
        #[arg(long)]
        uid: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct KeyArg {
    /// Secret key file [default: $XDG_DATA_HOME/pacmesh/node.key].
    #[arg(long)]
    pub key: Option<PathBuf>,
}

impl KeyArg {
    pub fn load(&self) -> Result<NodeKey> {
        NodeKey::load(&self.key.clone().unwrap_or_else(default_key_path))
    }
}

pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Key(k) => key_command(k),
    }
}

fn key_command(cmd: KeyCommand) -> Result<()> {
    match cmd {
        KeyCommand::Gen { out } => {
            let path = out.unwrap_or_else(default_key_path);
            let key = NodeKey::generate()?;
            key.save_new(&path)?;
            println!("key:        {}", path.display());
            println!("public key: {}", key.public_hex());
            println!("node id:    {}", key.peer_id());
        }
        KeyCommand::Show(arg) => {
            let key = arg.load()?;
            println!("public key: {}", key.public_hex());
            println!("node id:    {}", key.peer_id());
        }
        KeyCommand::Openpgp { key, uid } => {
            let key = key.load()?;
            let uid = uid.unwrap_or_else(|| default_uid(&key));
            let pgp = pacmesh_repo::sign::OpenPgpKey::from_ed25519_secret(key.seed(), &uid)?;
            print!("{}", pgp.public_key_armored());
        }
    }
    Ok(())
}

fn default_uid(key: &NodeKey) -> String {
    format!("pacmesh node <{}@pacmesh.invalid>", key.peer_id())
}
