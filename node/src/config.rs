//! Node configuration: a TOML file (every key optional) resolved with command-line flags into
//! [`Config`]. Precedence: flag, then file, then default. `examples/node.toml` documents every
//! key with its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::keys::default_data_dir;

/// The file as written by the operator: everything optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub data_dir: Option<PathBuf>,
    pub policy: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub publisher_key: Option<PathBuf>,
    pub http: Option<String>,
    pub listen: Option<Vec<String>>,
    pub bootstrap: Option<Vec<String>>,
    pub mdns: Option<bool>,
    pub tags: Option<Vec<String>>,
    pub aur_url: Option<String>,
    /// Worker threads of the node's async runtime (network, HTTP); default: one per core.
    pub threads: Option<usize>,
    /// GitLab API base for `CI_PKGBUILD_SOURCE=gitlab:ID` (default https://gitlab.com).
    pub gitlab_url: Option<String>,
    #[serde(default)]
    pub build: BuildSection,
    #[serde(default)]
    pub publish: PublishSection,
    #[serde(default)]
    pub mesh: MeshSection,
    /// Outbound notifications (reloaded on SIGHUP).
    #[serde(default)]
    pub webhook: Vec<crate::webhooks::WebhookFile>,
    /// Resource limits below which the node refuses new claims (reloaded on SIGHUP).
    #[serde(default)]
    pub health: crate::health::HealthLimits,
    /// Update detection (`[watch]`: AUR packages, interval, review).
    #[serde(default)]
    pub watch: crate::watch::WatchSection,
    /// Named schedules (`[[schedule]]`: name and `every` or `cron`).
    #[serde(default)]
    pub schedule: Vec<crate::schedule::ScheduleFile>,
    /// Rebuild cascades (`[rebuild]`: enabled, automation key).
    #[serde(default)]
    pub rebuild: crate::rebuild::RebuildSection,
}

/// `[mesh]`: how the node takes part in the libp2p mesh.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshSection {
    /// Capability announcements every this many milliseconds (default 15000; material changes
    /// are announced within a second regardless).
    pub announce_interval_ms: Option<u64>,
    /// Anti-entropy with a random peer every this many milliseconds (default 10000).
    pub sync_interval_ms: Option<u64>,
    /// Claim delay per rank position, milliseconds (default 2000).
    pub claim_step_ms: Option<u64>,
    /// Run a circuit-relay v2 server (signalling only) for NATed peers (default false).
    pub relay_server: Option<bool>,
    /// Most established connections (default 64).
    pub max_connections: Option<u32>,
    /// Relays to be reachable through when behind NAT (multiaddrs ending in /p2p/RELAYID).
    pub relays: Option<Vec<String>>,
    /// Turn libp2p off entirely: a single-node mesh (default true = on).
    pub enabled: Option<bool>,
    /// A builder keeps its own output until this many peers keep it (default 2; 0: keep all).
    pub replicas: Option<u32>,
    /// How often a builder asks its peers which of its outputs they keep (default 30000).
    pub retention_interval_ms: Option<u64>,
    /// Blobs served to peers over plain HTTP: "auto" (default), "off" or "IP:PORT"
    /// ([`BlobHttp`]).
    pub blob_http: Option<String>,
}

/// Where a node serves its blobs to peers over plain HTTP (bulk transfers: verified against
/// the hash by the fetcher, so the channel needs no integrity of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobHttp {
    /// On the IP address of the first TCP listen address, on a free port.
    Auto,
    /// Not served: peers fetch over `/pacmesh/blobs/2` only.
    Off,
    /// On this address.
    At(SocketAddr),
}

impl BlobHttp {
    /// Parses `auto`, `off` or `IP:PORT`.
    pub fn parse(s: &str) -> Result<BlobHttp> {
        match s.trim() {
            "auto" => Ok(BlobHttp::Auto),
            "off" => Ok(BlobHttp::Off),
            a => a
                .parse()
                .map(BlobHttp::At)
                .map_err(|_| anyhow::anyhow!("blob_http {s:?}: use \"auto\", \"off\" or IP:PORT")),
        }
    }

    /// The address to bind, given the libp2p listen multiaddrs (`Auto`: the IP of the first
    /// `/ip4|ip6/…/tcp/…` one, port 0; none such: not served).
    pub fn bind_addr(&self, listen: &[String]) -> Option<SocketAddr> {
        match self {
            BlobHttp::Off => None,
            BlobHttp::At(a) => Some(*a),
            BlobHttp::Auto => listen.iter().find_map(|l| {
                let mut parts = l.split('/').skip(1);
                let (proto, ip, transport) = (parts.next()?, parts.next()?, parts.next()?);
                if transport != "tcp" || !matches!(proto, "ip4" | "ip6") {
                    return None;
                }
                let ip: std::net::IpAddr = ip.parse().ok()?;
                Some(SocketAddr::new(ip, 0))
            }),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSection {
    /// Build at all (a mirror-only node sets false).
    pub enabled: Option<bool>,
    pub profile: Option<String>,
    pub base_root: Option<PathBuf>,
    pub slots: Option<u32>,
    pub timeout_secs: Option<u64>,
    pub log_cap_bytes: Option<usize>,
    pub arch: Option<String>,
    /// "UID:GID" that starts the sandbox when the node runs as root (host profile).
    pub run_as: Option<String>,
    /// Transient failures (network during a source fetch or makepkg's download phase): first
    /// retry after this many seconds (default 60), doubling.
    pub retry_initial_secs: Option<u64>,
    /// The longest wait between retries, seconds (default 3600).
    pub retry_max_secs: Option<u64>,
    /// Attempts per entry on this node before it is reported failed (default 5).
    pub max_attempts: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishSection {
    pub keep_generations: Option<usize>,
    pub uid: Option<String>,
}

/// Resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub policy: Option<PathBuf>,
    pub key: PathBuf,
    pub publisher_key: Option<PathBuf>,
    pub http: SocketAddr,
    pub listen: Vec<String>,
    pub bootstrap: Vec<String>,
    pub mdns: bool,
    pub tags: Vec<String>,
    pub aur_url: String,
    /// Worker threads of the async runtime; `None`: one per core.
    pub threads: Option<usize>,
    pub build_enabled: bool,
    pub profile: String,
    pub base_root: Option<PathBuf>,
    pub slots: u32,
    pub timeout_secs: u64,
    pub log_cap_bytes: usize,
    pub arch: String,
    pub run_as: Option<(u32, u32)>,
    pub keep_generations: usize,
    pub publish_uid: Option<String>,
    pub mesh_enabled: bool,
    pub announce_interval: std::time::Duration,
    pub sync_interval: std::time::Duration,
    pub claim_step: std::time::Duration,
    pub relay_server: bool,
    pub relays: Vec<String>,
    pub max_connections: u32,
    /// `[mesh] replicas`: see [`crate::retention`].
    pub replicas: u32,
    /// `[mesh] retention_interval_ms`.
    pub retention_interval: std::time::Duration,
    /// `[mesh] blob_http` / `--blob-http`.
    pub blob_http: BlobHttp,
    pub webhooks: Vec<crate::webhooks::Webhook>,
    pub health: crate::health::HealthLimits,
    /// Update detection (`[watch]`).
    pub watch: crate::watch::WatchSection,
    /// Named schedules, the built-in `hourly` and `daily` included.
    pub schedules: Vec<crate::schedule::Schedule>,
    /// Rebuild cascades (`[rebuild]`).
    pub rebuild: crate::rebuild::RebuildSection,
    /// GitLab API base (`CI_PKGBUILD_SOURCE=gitlab:ID`).
    pub gitlab_url: String,
    /// Retries of transient failures: first delay, longest delay, attempts.
    pub retry_initial: std::time::Duration,
    pub retry_max: std::time::Duration,
    pub max_attempts: u32,
    /// The flags this was resolved from: SIGHUP resolves them again with the file re-read.
    pub flags: Flags,
}

/// The part of the configuration a running node takes over on SIGHUP; everything else needs a
/// restart (the node says which keys changed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloadable {
    pub webhooks: Vec<crate::webhooks::Webhook>,
    pub health: crate::health::HealthLimits,
}

impl Config {
    /// The reloadable part.
    pub fn reloadable(&self) -> Reloadable {
        Reloadable {
            webhooks: self.webhooks.clone(),
            health: self.health,
        }
    }

    /// Keys that differ from `new` and only take effect after a restart.
    pub fn needs_restart(&self, new: &Config) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut diff = |k: &'static str, d: bool| {
            if d {
                v.push(k)
            }
        };
        diff("data_dir", self.data_dir != new.data_dir);
        diff("policy", self.policy != new.policy);
        diff("key", self.key != new.key);
        diff("publisher_key", self.publisher_key != new.publisher_key);
        diff("http", self.http != new.http);
        diff("listen", self.listen != new.listen);
        diff("bootstrap", self.bootstrap != new.bootstrap);
        diff("mdns", self.mdns != new.mdns);
        diff("tags", self.tags != new.tags);
        diff("aur_url", self.aur_url != new.aur_url);
        diff("threads", self.threads != new.threads);
        diff("build.enabled", self.build_enabled != new.build_enabled);
        diff("build.profile", self.profile != new.profile);
        diff("build.base_root", self.base_root != new.base_root);
        diff("build.slots", self.slots != new.slots);
        diff("build.timeout_secs", self.timeout_secs != new.timeout_secs);
        diff(
            "build.log_cap_bytes",
            self.log_cap_bytes != new.log_cap_bytes,
        );
        diff("build.arch", self.arch != new.arch);
        diff("build.run_as", self.run_as != new.run_as);
        diff(
            "publish.keep_generations",
            self.keep_generations != new.keep_generations,
        );
        diff("publish.uid", self.publish_uid != new.publish_uid);
        diff("watch", self.watch != new.watch);
        diff("schedule", self.schedules != new.schedules);
        diff(
            "mesh",
            self.mesh_enabled != new.mesh_enabled
                || self.announce_interval != new.announce_interval
                || self.sync_interval != new.sync_interval
                || self.claim_step != new.claim_step
                || self.relay_server != new.relay_server
                || self.relays != new.relays
                || self.max_connections != new.max_connections
                || self.replicas != new.replicas
                || self.retention_interval != new.retention_interval
                || self.blob_http != new.blob_http,
        );
        v
    }
}

/// The default HTTP address of a node, and the default `--node` URL of client commands.
pub const DEFAULT_HTTP: &str = "127.0.0.1:7878";
pub const DEFAULT_NODE_URL: &str = "http://127.0.0.1:7878";
pub const DEFAULT_AUR_URL: &str = "https://aur.archlinux.org";
pub const DEFAULT_GITLAB_URL: &str = "https://gitlab.com";

/// Flags given on the command line (`None`/empty: not given).
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub policy: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub publisher_key: Option<PathBuf>,
    pub http: Option<String>,
    pub listen: Vec<String>,
    pub bootstrap: Vec<String>,
    pub no_mdns: bool,
    pub tags: Vec<String>,
    pub aur_url: Option<String>,
    pub no_build: bool,
    pub threads: Option<usize>,
    pub blob_http: Option<String>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
    }
}

/// Machine architecture as pacman names it.
pub fn host_arch() -> String {
    match std::env::consts::ARCH {
        "x86" => "i686".into(),
        other => other.into(),
    }
}

impl Config {
    /// Flags over file over defaults; relative paths in the file are relative to the file.
    pub fn resolve(flags: Flags) -> Result<Config> {
        let flags_given = flags.clone();
        let (file, base) = match &flags.config {
            Some(p) => (
                ConfigFile::load(p)?,
                p.parent().map(Path::to_path_buf).unwrap_or_default(),
            ),
            None => (ConfigFile::default(), PathBuf::new()),
        };
        let rel = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        let data_dir = flags
            .data_dir
            .or(file.data_dir.map(rel))
            .unwrap_or_else(default_data_dir);
        let key = flags
            .key
            .or(file.key.map(rel))
            .unwrap_or_else(|| data_dir.join("node.key"));
        let http_s = flags
            .http
            .or(file.http)
            .unwrap_or_else(|| DEFAULT_HTTP.into());
        let http: SocketAddr = http_s
            .parse()
            .with_context(|| format!("http address {http_s:?} is not IP:PORT"))?;
        let profile = file.build.profile.unwrap_or_else(|| "host".into());
        if profile != "host" && profile != "chroot" {
            bail!("build.profile {profile:?}: use host or chroot");
        }
        if profile == "chroot" && file.build.base_root.is_none() {
            bail!("build.profile = \"chroot\" needs build.base_root");
        }
        let slots = file.build.slots.unwrap_or(1);
        if slots == 0 {
            bail!("build.slots must be at least 1 (set build.enabled = false to not build)");
        }
        let run_as = match file.build.run_as.as_deref() {
            None => None,
            Some(spec) => {
                let parsed = spec.split_once(':').and_then(|(u, g)| {
                    Some((u.trim().parse::<u32>().ok()?, g.trim().parse::<u32>().ok()?))
                });
                match parsed {
                    Some((0, _)) | Some((_, 0)) => bail!("build.run_as {spec:?}: must not be root"),
                    Some(ids) => Some(ids),
                    None => {
                        bail!("build.run_as {spec:?}: expected \"UID:GID\", e.g. \"65534:65534\"")
                    }
                }
            }
        };
        let tags = if flags.tags.is_empty() {
            file.tags.unwrap_or_default()
        } else {
            flags.tags
        };
        let arch = file.build.arch.unwrap_or_else(host_arch);
        for (what, v) in tags
            .iter()
            .map(|t| ("tag", t))
            .chain([("build.arch", &arch)])
        {
            pacmesh_protocol::Name::new(v.clone())
                .map_err(|e| anyhow::anyhow!("{what} {v:?}: {e}"))?;
        }
        if run_as.is_some() && profile == "chroot" {
            bail!("build.run_as works with the host profile only");
        }
        let webhooks = file
            .webhook
            .iter()
            .map(|w| w.resolve(&base))
            .collect::<Result<Vec<_>>>()?;
        let mut watch = file.watch;
        watch.key = watch.key.map(rel);
        let schedules = crate::schedule::resolve_all(&file.schedule).map_err(anyhow::Error::msg)?;
        watch
            .check_triggers(&schedules)
            .map_err(anyhow::Error::msg)?;
        let mut rebuild = file.rebuild;
        rebuild.key = rebuild.key.map(rel);
        let retry_initial = file.build.retry_initial_secs.unwrap_or(60).max(1);
        let retry_max = file.build.retry_max_secs.unwrap_or(3600).max(retry_initial);
        let max_attempts = file.build.max_attempts.unwrap_or(5);
        if max_attempts == 0 {
            bail!("build.max_attempts must be at least 1");
        }
        let blob_http = BlobHttp::parse(
            flags
                .blob_http
                .as_deref()
                .or(file.mesh.blob_http.as_deref())
                .unwrap_or("auto"),
        )?;
        Ok(Config {
            blob_http,
            watch,
            schedules,
            rebuild,
            gitlab_url: file.gitlab_url.unwrap_or_else(|| DEFAULT_GITLAB_URL.into()),
            retry_initial: std::time::Duration::from_secs(retry_initial),
            retry_max: std::time::Duration::from_secs(retry_max),
            max_attempts,
            webhooks,
            health: file.health,
            flags: flags_given,
            run_as,
            policy: flags.policy.or(file.policy.map(rel)),
            publisher_key: flags.publisher_key.or(file.publisher_key.map(rel)),
            http,
            listen: if flags.listen.is_empty() {
                file.listen.unwrap_or_default()
            } else {
                flags.listen
            },
            bootstrap: if flags.bootstrap.is_empty() {
                file.bootstrap.unwrap_or_default()
            } else {
                flags.bootstrap
            },
            mdns: !flags.no_mdns && file.mdns.unwrap_or(true),
            tags,
            aur_url: flags
                .aur_url
                .or(file.aur_url)
                .unwrap_or_else(|| DEFAULT_AUR_URL.into()),
            threads: match flags.threads.or(file.threads) {
                Some(0) => bail!("threads: at least 1"),
                t => t,
            },
            build_enabled: !flags.no_build && file.build.enabled.unwrap_or(true),
            profile,
            base_root: file.build.base_root.map(rel),
            slots,
            timeout_secs: file.build.timeout_secs.unwrap_or(3600),
            log_cap_bytes: file.build.log_cap_bytes.unwrap_or(16 << 20),
            arch,
            keep_generations: file.publish.keep_generations.unwrap_or(10).max(1),
            publish_uid: file.publish.uid,
            mesh_enabled: file.mesh.enabled.unwrap_or(true),
            announce_interval: ms(
                file.mesh.announce_interval_ms,
                15_000,
                "mesh.announce_interval_ms",
            )?,
            sync_interval: ms(file.mesh.sync_interval_ms, 10_000, "mesh.sync_interval_ms")?,
            claim_step: std::time::Duration::from_millis(file.mesh.claim_step_ms.unwrap_or(2000)),
            relay_server: file.mesh.relay_server.unwrap_or(false),
            relays: file.mesh.relays.unwrap_or_default(),
            max_connections: file.mesh.max_connections.unwrap_or(64).max(1),
            replicas: file.mesh.replicas.unwrap_or(2),
            retention_interval: ms(
                file.mesh.retention_interval_ms,
                30_000,
                "mesh.retention_interval_ms",
            )?,
            data_dir,
            key,
        })
    }
}

/// A positive interval in milliseconds, with a default.
fn ms(v: Option<u64>, default: u64, what: &str) -> Result<std::time::Duration> {
    match v.unwrap_or(default) {
        0 => bail!("{what} must be at least 1"),
        n => Ok(std::time::Duration::from_millis(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_paths_are_relative_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("node.toml");
        std::fs::write(
            &cfg,
            "data_dir = \"state\"\nhttp = \"127.0.0.1:9000\"\ntags = [\"bigmem\"]\nthreads = 3\n[build]\nslots = 2\n[publish]\nkeep_generations = 3\n",
        )
        .unwrap();
        let c = Config::resolve(Flags {
            config: Some(cfg.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.data_dir, dir.path().join("state"));
        assert_eq!(c.key, dir.path().join("state/node.key"));
        assert_eq!(c.http.port(), 9000);
        assert_eq!((c.slots, c.keep_generations), (2, 3));
        assert_eq!(c.tags, vec!["bigmem"]);
        assert_eq!(c.threads, Some(3));
        let c = Config::resolve(Flags {
            config: Some(cfg.clone()),
            http: Some("127.0.0.1:0".into()),
            tags: vec!["x".into()],
            threads: Some(1),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.http.port(), 0);
        assert_eq!(c.tags, vec!["x"]);
        assert_eq!(c.threads, Some(1));
        let err = Config::resolve(Flags {
            config: Some(cfg),
            threads: Some(0),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("threads: at least 1"),
            "{err:#}"
        );
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("node.toml");
        std::fs::write(&cfg, "htp = \"x\"\n").unwrap();
        let err = format!(
            "{:#}",
            Config::resolve(Flags {
                config: Some(cfg.clone()),
                ..Default::default()
            })
            .unwrap_err()
        );
        assert!(err.contains("node.toml") && err.contains("htp"), "{err}");
        std::fs::write(&cfg, "[build]\nslots = 0\n").unwrap();
        assert!(
            Config::resolve(Flags {
                config: Some(cfg.clone()),
                ..Default::default()
            })
            .is_err()
        );
        std::fs::write(&cfg, "[build]\nrun_as = \"0:0\"\n").unwrap();
        assert!(
            Config::resolve(Flags {
                config: Some(cfg.clone()),
                ..Default::default()
            })
            .is_err()
        );
        std::fs::write(&cfg, "[build]\nrun_as = \"65534:65534\"\n").unwrap();
        let c = Config::resolve(Flags {
            config: Some(cfg),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.run_as, Some((65534, 65534)));
    }

    #[test]
    fn blob_http_is_auto_off_or_an_address() {
        let listen = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let auto = BlobHttp::parse("auto").unwrap();
        assert_eq!(
            auto.bind_addr(&listen(&[
                "/ip4/127.0.0.1/udp/0/quic-v1",
                "/ip4/127.0.0.1/tcp/4001"
            ])),
            Some("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(
            auto.bind_addr(&listen(&["/ip6/::/tcp/0"])),
            Some("[::]:0".parse().unwrap())
        );
        // No TCP listen address (QUIC only, or a DNS name): not served.
        assert_eq!(
            auto.bind_addr(&listen(&["/ip4/0.0.0.0/udp/0/quic-v1"])),
            None
        );
        assert_eq!(auto.bind_addr(&listen(&["/dns4/example.org/tcp/1"])), None);
        assert_eq!(
            BlobHttp::parse("off")
                .unwrap()
                .bind_addr(&listen(&["/ip4/127.0.0.1/tcp/1"])),
            None
        );
        assert_eq!(
            BlobHttp::parse("10.0.0.1:7879").unwrap().bind_addr(&[]),
            Some("10.0.0.1:7879".parse().unwrap())
        );
        let err = BlobHttp::parse("yes").unwrap_err().to_string();
        assert!(err.contains("\"auto\", \"off\" or IP:PORT"), "{err}");
        // From the file, overridden by the flag; the default is auto.
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("node.toml");
        std::fs::write(&cfg, "[mesh]\nblob_http = \"off\"\n").unwrap();
        let c = Config::resolve(Flags {
            config: Some(cfg.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.blob_http, BlobHttp::Off);
        let c = Config::resolve(Flags {
            config: Some(cfg.clone()),
            blob_http: Some("127.0.0.1:9999".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.blob_http, BlobHttp::At("127.0.0.1:9999".parse().unwrap()));
        assert_eq!(
            Config::resolve(Flags::default()).unwrap().blob_http,
            BlobHttp::Auto
        );
        std::fs::write(&cfg, "[mesh]\nblob_http = \"maybe\"\n").unwrap();
        assert!(
            Config::resolve(Flags {
                config: Some(cfg),
                ..Default::default()
            })
            .is_err()
        );
    }
}
