//! The command-line surface (see DESIGN.md): clap definitions and dispatch.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use pacmesh_repo::db::{self, AddOptions, AddOutcome, DetachedSigner};
use pacmesh_repo::sign::OpenPgpKey;

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
    /// Create a mesh: a policy signed by the root key.
    #[command(subcommand)]
    Mesh(MeshCommand),
    /// Run a node: verify and store events, build, publish, serve the repository over HTTP.
    Node(NodeArgs),
    /// Submit and inspect queue entries on a node.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Packages trees (one PKGBUILD folder per package base, Chaotic-AUR layout).
    #[command(subcommand)]
    Tree(TreeCommand),
    /// Blobs of the content store: fetch one from the mesh.
    #[command(subcommand)]
    Blob(crate::blob_fetch::BlobCommand),
    /// Summary of a node: identity, policy, events, queue, published generations.
    Status {
        #[arg(long, default_value = crate::config::DEFAULT_NODE_URL, value_name = "URL")]
        node: String,
        #[arg(long)]
        json: bool,
    },
    /// One node with fresh keys builds examples/ and serves a signed repository on 127.0.0.1.
    Demo {
        /// Exit 0 once the repository is published instead of serving until Ctrl-C.
        #[arg(long)]
        exit_after_publish: bool,
        /// HTTP address [default: 127.0.0.1:0, a free port].
        #[arg(long, default_value = "127.0.0.1:0")]
        http: String,
        /// Keep the demo's files here instead of a temporary directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Follow the mesh's signed repositories and serve them: fetch, verify, switch atomically.
    Mirror(MirrorArgs),
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
pub enum MeshCommand {
    /// Write a signed mesh policy; the root key is maintainer and publisher unless others are named.
    Init {
        /// The mesh root key (it names the mesh and signs its policies).
        #[arg(long)]
        key: PathBuf,
        /// Repository name (repeatable).
        #[arg(long = "repo", required = true)]
        repos: Vec<String>,
        /// Architecture of every repository (repeatable) [default: this machine's].
        #[arg(long = "arch")]
        arches: Vec<String>,
        /// Maintainer public key (repeatable): may enqueue, cancel, remove.
        #[arg(long = "maintainer", value_name = "PUBKEY")]
        maintainers: Vec<String>,
        /// Publisher public key (repeatable): may publish repository generations.
        #[arg(long = "publisher", value_name = "PUBKEY")]
        publishers: Vec<String>,
        /// Builder public key (repeatable) whose reports count [default: any node].
        #[arg(long = "builder", value_name = "PUBKEY")]
        builders: Vec<String>,
        /// Matching build reports from distinct builders needed to publish.
        #[arg(long, default_value_t = 1)]
        quorum: u32,
        /// Claim lease, seconds.
        #[arg(long, default_value_t = 600)]
        lease_secs: u32,
        /// Default build timeout, seconds.
        #[arg(long, default_value_t = 3600)]
        build_timeout_secs: u32,
        /// Policy counter: a node replaces its policy only with a higher one.
        #[arg(long = "policy-version", default_value_t = 1)]
        policy_version: u64,
        /// Where to write the signed policy (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The signed mesh policy (needed at first start; a newer one replaces the stored one).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Node key [default: DATA_DIR/node.key, created at first start].
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// A publisher key: this node publishes the repositories.
    #[arg(long)]
    pub publisher_key: Option<PathBuf>,
    /// Data directory [default: $XDG_DATA_HOME/pacmesh].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// libp2p listen multiaddr (repeatable; default /ip4/0.0.0.0/tcp/0 and /ip4/0.0.0.0/udp/0/quic-v1).
    #[arg(long)]
    pub listen: Vec<String>,
    /// HTTP address; 127.0.0.1:0 picks a free port and prints it.
    #[arg(long)]
    pub http: Option<String>,
    /// Bootstrap peer multiaddr (repeatable; /p2p/PEERID may be omitted).
    #[arg(long)]
    pub bootstrap: Vec<String>,
    /// Capability tag (repeatable), e.g. bigmem.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Do not use mDNS on the local network.
    #[arg(long)]
    pub no_mdns: bool,
    /// AUR base URL.
    #[arg(long)]
    pub aur_url: Option<String>,
    /// Do not build (serve and publish only).
    #[arg(long)]
    pub no_build: bool,
    /// Serve blobs to peers over plain HTTP (bulk transfers, verified by hash): `auto` (on the
    /// IP of the first TCP listen address, a free port), `off`, or IP:PORT [default: auto].
    #[arg(long, value_name = "auto|off|IP:PORT")]
    pub blob_http: Option<String>,
    /// Worker threads of the async runtime (default: one per core; 1 when many nodes share
    /// a machine).
    #[arg(long)]
    pub threads: Option<usize>,
    /// TOML config file (see examples/node.toml); flags override it.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MirrorArgs {
    /// The signed mesh policy (names the mesh and its publishers).
    #[arg(long)]
    pub policy: PathBuf,
    /// Join the libp2p mesh through this peer (repeatable; `/p2p/ID` optional): events by
    /// gossip and sync, blobs from every connected peer; the mirror serves blobs to the mesh too.
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// libp2p listen address (repeatable; joins the mesh) [default with --bootstrap: TCP and
    /// QUIC on all interfaces, ports picked by the system].
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// No mDNS discovery of mesh peers on the LAN.
    #[arg(long)]
    pub no_mdns: bool,
    /// A node or mirror to follow over HTTP (repeatable): events and blobs come from all.
    #[arg(long, value_name = "URL")]
    pub follow: Vec<String>,
    /// Where to lay out the repositories (OUT/NAME/os/ARCH, OUT/NAME/gen/G/os/ARCH).
    #[arg(long)]
    pub out: PathBuf,
    /// Serve OUT over HTTP here (127.0.0.1:0 picks a port and prints it).
    #[arg(long)]
    pub http: Option<String>,
    /// Generations kept per repository and architecture.
    #[arg(long, default_value_t = 10)]
    pub keep: usize,
    /// Event and content store [default: $XDG_DATA_HOME/pacmesh/mirror-<hash of OUT>].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seconds between sync rounds.
    #[arg(long, default_value_t = 2)]
    pub interval: u64,
    /// Sync once, serve the newest generations, exit.
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Sign a queue entry with a maintainer key and submit it to a node.
    #[command(group(clap::ArgGroup::new("src").args(["dir", "git", "aur", "tree"])))]
    #[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["dir", "git", "aur", "tree", "all"])))]
    Add {
        /// Maintainer key.
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = crate::config::DEFAULT_NODE_URL, value_name = "URL")]
        node: String,
        /// A local PKGBUILD folder (uploaded to the node as a snapshot).
        #[arg(long, value_name = "PATH")]
        dir: Option<PathBuf>,
        /// A git repository holding a PKGBUILD.
        #[arg(long, value_name = "URL")]
        git: Option<String>,
        /// Branch, tag or commit of --git [default: the default branch].
        #[arg(long = "ref", requires = "git")]
        rev: Option<String>,
        /// Folder of --git holding the PKGBUILD.
        #[arg(long, requires = "git")]
        subdir: Option<String>,
        /// An AUR package (its AUR dependencies are enqueued too, first).
        #[arg(long, value_name = "NAME")]
        aur: Option<String>,
        /// AUR base URL for --aur (RPC at URL/rpc/v5/info) [default: https://aur.archlinux.org].
        #[arg(long, value_name = "URL", requires = "aur")]
        aur_url: Option<String>,
        /// A packages tree (one folder per package base): enqueues the folders changed since
        /// its last sync (every folder at the first), like `pacmesh tree sync`.
        #[arg(long, value_name = "GITURL", conflicts_with = "wait")]
        tree: Option<String>,
        /// With --tree: every folder of the tree, changed or not. Alone: every package base
        /// the repository publishes now, again from its last source.
        #[arg(long, conflicts_with_all = ["dir", "git", "aur", "wait"])]
        all: bool,
        /// Requirement a builder must meet (repeatable): arch=aarch64, mem>=16G, tag=bigmem...
        #[arg(long)]
        needs: Vec<String>,
        /// Target repository [default: the mesh's only one].
        #[arg(long)]
        repo: Option<String>,
        /// Architecture to build for (repeatable) [default: all of the repository's].
        #[arg(long = "arch")]
        arches: Vec<String>,
        /// SOURCE_DATE_EPOCH for the build.
        #[arg(long)]
        source_date_epoch: Option<u64>,
        /// Build timeout in seconds [default: the policy's].
        #[arg(long)]
        timeout: Option<u32>,
        /// Wait until the entry is published, failed or cancelled (a spinner on a terminal);
        /// exit 1 if it failed.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, seconds.
        #[arg(long, default_value_t = 7200, requires = "wait")]
        wait_timeout: u64,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the queue.
    Ls {
        #[arg(long, default_value = crate::config::DEFAULT_NODE_URL, value_name = "URL")]
        node: String,
        #[arg(long)]
        json: bool,
    },
    /// Why a package is or is not queued, claimed, built, failed, published or up to date;
    /// shows the change awaiting review, if any.
    Why {
        /// Package name or package base.
        pkg: String,
        #[arg(long, default_value = crate::config::DEFAULT_NODE_URL, value_name = "URL")]
        node: String,
        #[arg(long)]
        json: bool,
    },
    /// Approve the change an entry waits on (review gate): sign an `approve` with a
    /// maintainer key.
    Approve {
        /// Maintainer key.
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = crate::config::DEFAULT_NODE_URL, value_name = "URL")]
        node: String,
        /// The entry (full id or a unique prefix).
        entry: String,
        #[arg(long)]
        json: bool,
    },
    /// Withdraw a queued entry (full id or a unique prefix).
    Cancel {
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = crate::config::DEFAULT_NODE_URL, value_name = "URL")]
        node: String,
        entry: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TreeCommand {
    /// Enqueue the folders of a packages tree that changed since the last sync (all at the
    /// first), those named by [deploy NAME] / [deploy all] in new commit messages, and remove
    /// the package bases whose folders are gone.
    Sync {
        /// Maintainer key.
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = crate::config::DEFAULT_NODE_URL, value_name = "URL")]
        node: String,
        /// The tree's git URL.
        #[arg(long, value_name = "URL")]
        git: String,
        /// Branch, tag or commit [default: the default branch].
        #[arg(long = "ref")]
        rev: Option<String>,
        /// Target repository [default: the mesh's only one].
        #[arg(long)]
        repo: Option<String>,
        /// Also enqueue every folder whose .CI/config has CI_ON_TRIGGER=NAME.
        #[arg(long, value_name = "NAME")]
        trigger: Option<String>,
        /// Where the tree's git mirror is kept [default: $XDG_CACHE_HOME/pacmesh].
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        /// Print the plan without submitting anything.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
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
    /// Generations of a repository on a node: number, time, publisher, package changes.
    History {
        name: String,
        #[arg(long, default_value = crate::config::DEFAULT_NODE_URL, value_name = "URL")]
        node: String,
        #[arg(long)]
        json: bool,
    },
    /// Publish a new generation equal to generation GEN (signed with a publisher key).
    Rollback {
        name: String,
        generation: u64,
        /// A publisher key of the mesh.
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = crate::config::DEFAULT_NODE_URL, value_name = "URL")]
        node: String,
        /// Only this architecture [default: every one whose history holds GEN].
        #[arg(long)]
        arch: Option<String>,
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
        let Some(path) = &self.key else {
            return Ok(None);
        };
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
        Command::Mesh(MeshCommand::Init {
            key,
            repos,
            arches,
            maintainers,
            publishers,
            builders,
            quorum,
            lease_secs,
            build_timeout_secs,
            policy_version,
            out,
        }) => {
            let p = crate::mesh_cli::mesh_init(&crate::mesh_cli::MeshInit {
                root_key: key,
                repos,
                arches,
                maintainers,
                publishers,
                builders,
                quorum,
                lease_secs,
                build_timeout_secs,
                policy_version,
                out: out.clone(),
            })?;
            println!(
                "wrote {} (mesh {}, policy version {})",
                out.display(),
                p.root,
                p.policy_version
            );
            Ok(())
        }
        Command::Node(args) => {
            let cfg = crate::config::Config::resolve(crate::config::Flags {
                config: args.config,
                data_dir: args.data_dir,
                policy: args.policy,
                key: args.key,
                publisher_key: args.publisher_key,
                http: args.http,
                listen: args.listen,
                bootstrap: args.bootstrap,
                no_mdns: args.no_mdns,
                tags: args.tags,
                aur_url: args.aur_url,
                no_build: args.no_build,
                threads: args.threads,
                blob_http: args.blob_http,
            })?;
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = cfg.threads {
                rt.worker_threads(n);
            }
            let rt = rt.enable_all().build()?;
            rt.block_on(crate::daemon::run(
                cfg,
                crate::daemon::stop_signal(),
                |_| {},
            ))
        }
        Command::Queue(q) => queue_command(q),
        Command::Tree(t) => crate::tree::tree_command(t),
        Command::Mirror(a) => mirror_command(a),
        Command::Blob(b) => crate::blob_fetch::command(b),
        Command::Status { node, json } => {
            let s = crate::client::Client::new(&node).get_json("/api/v1/status")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", crate::term::status_text(&s, crate::term::color()));
            }
            Ok(())
        }
        Command::Demo {
            exit_after_publish,
            http,
            dir,
        } => crate::demo::run(exit_after_publish, &http, dir),
        Command::Build {
            profile,
            base_root,
            dep_repo,
            timeout,
            source_date_epoch,
            out,
            data_dir,
            key,
            quiet,
            json,
            dir,
        } => crate::build_cmd::run(crate::build_cmd::BuildRequest {
            dir,
            out,
            profile,
            base_root,
            dep_repos: dep_repo,
            timeout,
            source_date_epoch,
            data_dir,
            key,
            quiet,
            json,
        }),
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

fn mirror_command(a: MirrorArgs) -> Result<()> {
    let mut cfg = crate::mirror::MirrorConfig::new(a.policy, a.out, a.follow);
    cfg.bootstrap = a.bootstrap;
    cfg.listen = a.listen;
    cfg.mdns = !a.no_mdns;
    cfg.keep = a.keep;
    cfg.interval = std::time::Duration::from_secs(a.interval.max(1));
    if let Some(d) = a.data_dir {
        cfg.data_dir = d;
    }
    if let Some(h) = a.http {
        cfg.http = Some(
            h.parse()
                .with_context(|| format!("--http {h:?} is not an address like 127.0.0.1:8080"))?,
        );
    }
    let rt = tokio::runtime::Runtime::new()?;
    if a.once {
        return rt.block_on(crate::mirror::run_once(cfg));
    }
    rt.block_on(crate::mirror::run(
        cfg,
        crate::daemon::stop_signal(),
        |_| {},
    ))
}

fn repo_command(cmd: RepoCommand) -> Result<()> {
    match cmd {
        RepoCommand::History { name, node, json } => {
            let v = crate::history::fetch_history(&node, &name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", crate::history::render(&v));
            }
        }
        RepoCommand::Rollback {
            name,
            generation,
            key,
            node,
            arch,
        } => {
            let key = NodeKey::load(&key)?;
            for (a, g, id) in
                crate::history::rollback(&key, &node, &name, generation, arch.as_deref())?
            {
                println!(
                    "published {name}/{a} generation {g} (equal to generation {generation}), event {id}"
                );
            }
        }
        RepoCommand::Add {
            key,
            remove,
            allow_downgrade,
            json,
            db,
            packages,
        } => {
            let signer = key.signer()?;
            let mut opts = AddOptions::default();
            opts.allow_downgrade = allow_downgrade;
            opts.remove_old_files = remove;
            opts.sign_packages = signer.is_some();
            let report = db::repo_add(
                &db,
                &packages,
                &opts,
                signer.as_ref().map(|s| s as &dyn DetachedSigner),
            )
            .with_context(|| format!("nothing changed in {}", db.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            for p in &report.packages {
                let what = match &p.outcome {
                    AddOutcome::New => "added".to_string(),
                    AddOutcome::Replaced { old_version, .. } => {
                        format!("updated from {old_version}")
                    }
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
                Some(w) => println!(
                    "wrote {}{}",
                    w.db.display(),
                    if w.db_sig.is_some() { " (signed)" } else { "" }
                ),
                None => println!("{} unchanged", db.display()),
            }
        }
        RepoCommand::Remove {
            key,
            json,
            db,
            pkgnames,
        } => {
            let signer = key.signer()?;
            let report = db::repo_remove(
                &db,
                &pkgnames,
                signer.as_ref().map(|s| s as &dyn DetachedSigner),
            )
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

fn queue_command(cmd: QueueCommand) -> Result<()> {
    use crate::mesh_cli::{AddSource, QueueAdd};
    match cmd {
        QueueCommand::Add {
            key,
            node,
            dir,
            git,
            rev,
            subdir,
            aur,
            aur_url,
            tree,
            all,
            needs,
            repo,
            arches,
            source_date_epoch,
            timeout,
            wait,
            wait_timeout,
            json,
        } => {
            if tree.is_some() || all {
                return crate::requeue::command(
                    crate::requeue::Requeue {
                        key,
                        node,
                        repo,
                        tree,
                        all,
                        needs,
                        cache_dir: None,
                    },
                    !arches.is_empty() || source_date_epoch.is_some() || timeout.is_some(),
                    json,
                );
            }
            let node_url = node.clone();
            let source = match (dir, git, aur, tree) {
                (Some(d), ..) => AddSource::Dir(d),
                (_, Some(url), ..) => AddSource::Git { url, rev, subdir },
                (_, _, Some(a), _) => AddSource::Aur(a),
                _ => anyhow::bail!(
                    "say what to build: --dir PATH, --git URL, --aur NAME or --tree GITURL"
                ),
            };
            let id = crate::mesh_cli::queue_add(&QueueAdd {
                key,
                node,
                source,
                repo,
                arches,
                needs,
                source_date_epoch,
                timeout_secs: timeout,
                aur_url,
            })?;
            if !wait {
                if json {
                    println!("{}", serde_json::json!({ "id": id.to_string() }));
                } else {
                    println!("{id}");
                }
                return Ok(());
            }
            if !json {
                println!("{id}");
            }
            let client = crate::client::Client::new(&node_url);
            let e = crate::term::wait_entry(
                &client,
                &id.to_string(),
                std::time::Duration::from_secs(wait_timeout),
                crate::term::interactive() && !json,
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                println!("{}", e["status"]["state"].as_str().unwrap_or("?"));
            }
        }
        QueueCommand::Ls { node, json } => {
            let q = crate::client::Client::new(&node).get_json("/api/v1/queue")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&q)?);
            } else {
                print!("{}", crate::term::queue_table(&q, crate::term::color()));
            }
        }
        QueueCommand::Why { pkg, node, json } => {
            let path = format!("/api/v1/why/{}", crate::why::url_segment(&pkg));
            let v = crate::client::Client::new(&node).get_json(&path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", crate::why::render(&v, crate::term::color()));
            }
        }
        QueueCommand::Approve {
            key,
            node,
            entry,
            json,
        } => {
            let (entry, id) = crate::mesh_cli::queue_approve(&key, &node, &entry)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "entry": entry.to_string(), "approve_event": id.to_string() })
                );
            } else {
                println!("approved entry {entry} (event {id})");
            }
        }
        QueueCommand::Cancel {
            key,
            node,
            entry,
            json,
        } => {
            let id = crate::mesh_cli::queue_cancel(&key, &node, &entry)?;
            if json {
                println!("{}", serde_json::json!({ "cancel_event": id.to_string() }));
            } else {
                println!("cancelled (event {id})");
            }
        }
    }
    Ok(())
}
