//! The command-line surface (see DESIGN.md): clap definitions and dispatch.

use std::path::PathBuf;

use anyhow::{Context, Result};
use pacmesh_repo::db::{self, AddOptions, AddOutcome, DetachedSigner};
use pacmesh_repo::sign::OpenPgpKey;
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
    /// Write pacman repository databases (a faster, atomic, deterministic repo-add).
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Build one PKGBUILD folder with makepkg inside bubblewrap; prints artifact paths and blake3.
    Build {
        /// host: the host's system dirs read-only, makepkg --nodeps; chroot: a base root plus a
        /// copy-on-write layer with the dependencies installed.
        #[arg(long, default_value = "host", value_parser = ["host", "chroot"])]
        profile: String,
        /// Base root for --profile chroot (must contain pacman and makepkg).
        #[arg(long, value_name = "DIR")]
        base_root: Option<PathBuf>,
        /// A local repository (NAME=DIR holding NAME.db) to install dependencies from (chroot).
        #[arg(long, value_name = "NAME=DIR")]
        dep_repo: Vec<String>,
        /// Wall-clock limit of the whole build, in seconds.
        #[arg(long, default_value_t = 3600, value_name = "SECS")]
        timeout: u64,
        /// SOURCE_DATE_EPOCH [default: $SOURCE_DATE_EPOCH, else the PKGBUILD's mtime].
        #[arg(long, value_name = "N")]
        source_date_epoch: Option<u64>,
        /// Where to put the packages.
        #[arg(long, default_value = ".", value_name = "DIR")]
        out: PathBuf,
        /// Data dir holding the work dirs and the source cache [default: $XDG_DATA_HOME/pacmesh].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Node key naming the PACKAGER [default: $XDG_DATA_HOME/pacmesh/node.key if present].
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// Do not stream the build log to stderr (the tail is still shown on failure).
        #[arg(long, short)]
        quiet: bool,
        /// Print the artifacts as JSON.
        #[arg(long)]
        json: bool,
        dir: PathBuf,
    },
    /// Show what a .SRCINFO, .PKGINFO, .BUILDINFO, package file or repository database says.
    Inspect {
        path: PathBuf,
        /// Print every parsed field as JSON.
        #[arg(long)]
        json: bool,
        /// Verify PATH.sig with this OpenPGP public key (armored or binary).
        #[arg(long, value_name = "FILE")]
        pubkey: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Add packages to a database (DB like x/NAME.db.tar.zst), creating it if needed.
    ///
    /// A newer version replaces an older one of the same pkgname; an older or equal version is
    /// refused unless --allow-downgrade. With --key the databases are signed, and so are the
    /// packages that have no .sig yet.
    Add {
        #[command(flatten)]
        key: OptKeyArg,
        /// Delete the package files (and .sig) that the new ones replace.
        #[arg(long, short = 'R')]
        remove: bool,
        /// Accept an older version, or another build of the same version.
        #[arg(long)]
        allow_downgrade: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        db: PathBuf,
        #[arg(required = true)]
        packages: Vec<PathBuf>,
    },
    /// Remove packages (by pkgname) from a database; package files stay on disk.
    Remove {
        #[command(flatten)]
        key: OptKeyArg,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        db: PathBuf,
        #[arg(required = true)]
        pkgnames: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct OptKeyArg {
    /// Sign with this node key (OpenPGP v4 derived from it); unsigned without it.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// OpenPGP user id of the signing key [default: "pacmesh node <PEERID@pacmesh.invalid>"].
    #[arg(long)]
    pub uid: Option<String>,
}

impl OptKeyArg {
    fn signer(&self) -> Result<Option<OpenPgpKey>> {
        let Some(path) = &self.key else { return Ok(None) };
        let key = NodeKey::load(path)?;
        let uid = self.uid.clone().unwrap_or_else(|| default_uid(&key));
        Ok(Some(OpenPgpKey::from_ed25519_secret(key.seed(), &uid)?))
    }
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate an ed25519 secret key (mode 0600; never overwrites); prints the public key and node id.
    Gen {
        /// Where to write the key [default: $XDG_DATA_HOME/pacmesh/node.key].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the public key, libp2p node id (PeerId) and OpenPGP fingerprint of a key.
    Show {
        #[command(flatten)]
        key: KeyArg,
        /// Print only the OpenPGP fingerprint (for pacman-key --lsign-key).
        #[arg(long)]
        fingerprint: bool,
    },
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
        Command::Repo(r) => repo_command(r),
        Command::Build { profile, base_root, dep_repo, timeout, source_date_epoch, out, data_dir, key, quiet, json, dir } => {
            crate::build_cmd::run(crate::build_cmd::BuildRequest {
                dir, out, profile, base_root, dep_repos: dep_repo, timeout, source_date_epoch, data_dir, key, quiet, json,
            })
        }
        Command::Inspect { path, json, pubkey } => {
            let pubkey = pubkey
                .map(|p| std::fs::read(&p).with_context(|| format!("cannot read {}", p.display())))
                .transpose()?;
            let report = crate::inspect::inspect(&path, pubkey.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", crate::inspect::render(&report));
            }
            Ok(())
        }
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
        KeyCommand::Show { key, fingerprint } => {
            let key = key.load()?;
            let pgp = OpenPgpKey::from_ed25519_secret(key.seed(), &default_uid(&key))?;
            if fingerprint {
                println!("{}", pgp.fingerprint());
            } else {
                println!("public key: {}", key.public_hex());
                println!("node id:    {}", key.peer_id());
                println!("openpgp:    {}", pgp.fingerprint());
            }
        }
        KeyCommand::Openpgp { key, uid } => {
            let key = key.load()?;
            let uid = uid.unwrap_or_else(|| default_uid(&key));
            let pgp = OpenPgpKey::from_ed25519_secret(key.seed(), &uid)?;
            print!("{}", pgp.public_key_armored());
        }
    }
    Ok(())
}

fn default_uid(key: &NodeKey) -> String {
    format!("pacmesh node <{}@pacmesh.invalid>", key.peer_id())
}

fn repo_command(cmd: RepoCommand) -> Result<()> {
    match cmd {
        RepoCommand::Add { key, remove, allow_downgrade, json, db, packages } => {
            let signer = key.signer()?;
            let mut opts = AddOptions::default();
            opts.allow_downgrade = allow_downgrade;
            opts.remove_old_files = remove;
            opts.sign_packages = signer.is_some();
            let report = db::repo_add(&db, &packages, &opts, signer.as_ref().map(|s| s as &dyn DetachedSigner))
                .with_context(|| format!("nothing changed in {}", db.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            for p in &report.packages {
                let what = match &p.outcome {
                    AddOutcome::New => "added".to_string(),
                    AddOutcome::Replaced { old_version, .. } => format!("updated from {old_version}"),
                    AddOutcome::Unchanged => "unchanged".to_string(),
                    _ => "changed".to_string(),
                };
                let signed = if p.signed.is_some() { " (signed)" } else { "" };
                println!("{} {}: {what}{signed}", p.name, p.version);
            }
            for f in &report.removed_files {
                println!("removed {}", f.display());
            }
            for (f, why) in &report.remove_failures {
                eprintln!("pacmesh: warning: could not remove {}: {why}", f.display());
            }
            match &report.written {
                Some(w) => println!("wrote {}{}", w.db.display(), if w.db_sig.is_some() { " (signed)" } else { "" }),
                None => println!("{} unchanged", db.display()),
            }
        }
        RepoCommand::Remove { key, json, db, pkgnames } => {
            let signer = key.signer()?;
            let report = db::repo_remove(&db, &pkgnames, signer.as_ref().map(|s| s as &dyn DetachedSigner))
                .with_context(|| format!("nothing changed in {}", db.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            for e in &report.removed {
                println!("removed {} {}", e.name, e.version);
            }
            println!("wrote {}", report.written.db.display());
        }
    }
    Ok(())
}
