//! Deterministic fixtures: keys from fixed seeds, fixed times, fixed hashes.
#![allow(dead_code)]

use pacmesh_protocol::*;

/// 2026-01-01T00:00:00Z.
pub const T0: Timestamp = Timestamp::from_millis(1_767_225_600_000);

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}
pub fn root() -> SigningKey {
    key(1)
}
pub fn maintainer() -> SigningKey {
    key(2)
}
pub fn builder() -> SigningKey {
    key(3)
}
pub fn publisher() -> SigningKey {
    key(4)
}
pub fn pk(k: &SigningKey) -> PublicKey {
    PublicKey::from(k)
}
pub fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}
pub fn h(s: &str) -> Hash {
    Hash::new(s.as_bytes())
}

pub fn queue_entry() -> QueueEntry {
    QueueEntry {
        repo: name("extra"),
        source: Source::Aur {
            pkgbase: name("hello"),
        },
        arches: vec![name("x86_64")],
        needs: vec!["mem>=2G".parse().unwrap()],
        source_date_epoch: Some(1_700_000_000),
        timeout_secs: None,
        after: Vec::new(),
        review: None,
        pkgrel_bump: None,
        cascade: Vec::new(),
    }
}

pub fn artifact() -> Artifact {
    Artifact {
        file_name: FileName::new("hello-1.0-1-x86_64.pkg.tar.zst").unwrap(),
        blake3: h("package"),
        sha256: Sha256::digest(b"package"),
        size: 4096,
    }
}

pub fn manifest() -> RepoManifest {
    RepoManifest {
        version: MANIFEST_VERSION,
        repo: name("extra"),
        arch: name("x86_64"),
        generation: 2,
        previous: Some(h("publish event 1")),
        time: T0,
        publisher: pk(&publisher()),
        db: h("db"),
        files_db: h("files"),
        db_sig: h("db.sig"),
        files_db_sig: None,
        packages: vec![ManifestPackage {
            file_name: FileName::new("hello-1.0-1-x86_64.pkg.tar.zst").unwrap(),
            pkgname: name("hello"),
            version: "1.0-1".into(),
            blake3: h("package"),
            sha256: Sha256::digest(b"package"),
            size: 4096,
            sig: h("package.sig"),
        }],
    }
}

pub fn policy(counter: u64) -> MeshPolicy {
    MeshPolicy {
        version: POLICY_VERSION,
        root: pk(&root()),
        policy_version: counter,
        time: T0,
        repos: vec![RepoPolicy {
            name: name("extra"),
            arches: vec![name("x86_64"), name("aarch64")],
        }],
        maintainers: vec![pk(&root()), pk(&maintainer())],
        publishers: vec![pk(&publisher())],
        builders: BuilderPolicy::Any,
        quorum: 1,
        lease_secs: 600,
        build_timeout_secs: 3600,
    }
}

pub fn capabilities() -> Capabilities {
    Capabilities {
        arch: name("x86_64"),
        microarch: 3,
        cores: 8,
        memory_bytes: 16 << 30,
        disk_free_bytes: 100 << 30,
        tags: vec![name("bigmem")],
        profile: name("chroot"),
        load: 25,
        slots: 2,
        busy: 0,
    }
}

pub fn announcement() -> Announcement {
    Announcement {
        version: ANNOUNCEMENT_VERSION,
        node: pk(&builder()),
        time: T0,
        expires: T0.saturating_add(std::time::Duration::from_secs(300)),
        capabilities: capabilities(),
        digest: None,
        blob_http_port: None,
    }
}

/// An event by `k` with sequence `seq` (prev derived from seq).
pub fn event(k: &SigningKey, seq: u64, body: EventBody) -> Event {
    let prev = if seq == 1 {
        None
    } else {
        Some(h(&format!("prev {seq}")))
    };
    Event::new(pk(k), seq, prev, T0, body)
}

/// Every event body kind, with the key that may sign it.
pub fn all_bodies() -> Vec<(&'static str, SigningKey, EventBody)> {
    let entry = h("enqueue event");
    vec![
        ("enqueue", maintainer(), EventBody::Enqueue(queue_entry())),
        ("cancel", maintainer(), EventBody::Cancel { entry }),
        (
            "remove",
            maintainer(),
            EventBody::Remove {
                pkgbase: name("hello"),
                repo: name("extra"),
            },
        ),
        (
            "claim",
            builder(),
            EventBody::Claim {
                entry,
                attempt: 1,
                lease_until: T0.saturating_add(std::time::Duration::from_secs(600)),
            },
        ),
        (
            "built",
            builder(),
            EventBody::Built {
                entry,
                attempt: 1,
                artifacts: vec![artifact()],
                log: h("log"),
                source_commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            },
        ),
        (
            "failed",
            builder(),
            EventBody::Failed {
                entry,
                attempt: 2,
                reason: "makepkg exited with status 4".into(),
                log: Some(h("log 2")),
            },
        ),
        ("publish", publisher(), EventBody::Publish(manifest())),
        ("approve", maintainer(), EventBody::Approve { entry }),
    ]
}
