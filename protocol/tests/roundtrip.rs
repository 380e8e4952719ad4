//! Property tests: any valid message survives sign → wire → decode → verify
//! unchanged, and requirement strings survive Display → parse.

mod common;

use pacmesh_protocol::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

fn name() -> impl Strategy<Value = Name> {
    "[a-z0-9@_+][a-z0-9@._+-]{0,20}".prop_map(|s| Name::new(s).unwrap())
}
fn file_name() -> impl Strategy<Value = FileName> {
    "[a-zA-Z0-9_+-][a-zA-Z0-9._+ -]{0,40}".prop_map(|s| FileName::new(s).unwrap())
}
fn hash() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>().prop_map(Hash::from_bytes)
}
fn sha() -> impl Strategy<Value = Sha256> {
    any::<[u8; 32]>().prop_map(Sha256::from_bytes)
}
fn key() -> impl Strategy<Value = SigningKey> {
    any::<[u8; 32]>().prop_map(|b| SigningKey::from_bytes(&b))
}
fn pubkey() -> impl Strategy<Value = PublicKey> {
    key().prop_map(|k| PublicKey::from(&k))
}
fn time() -> impl Strategy<Value = Timestamp> {
    any::<u64>().prop_map(Timestamp::from_millis)
}
fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,40}"
}
fn word() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9:/._~-]{0,40}"
}

fn requirement() -> impl Strategy<Value = Requirement> {
    prop_oneof![
        name().prop_map(Requirement::Arch),
        (1u8..=4).prop_map(Requirement::MicroArch),
        any::<u32>().prop_map(Requirement::Cores),
        any::<u64>().prop_map(Requirement::Memory),
        any::<u64>().prop_map(Requirement::Disk),
        name().prop_map(Requirement::Tag),
        name().prop_map(Requirement::Profile),
    ]
}

fn source() -> impl Strategy<Value = Source> {
    prop_oneof![
        ("[^\u{0}]{1,40}", option::of(hash()))
            .prop_map(|(path, snapshot)| Source::Dir { path, snapshot }),
        (
            word(),
            option::of(word()),
            option::of("[a-z]{1,8}(/[a-z]{1,8}){0,2}")
        )
            .prop_map(|(url, rev, subdir)| Source::Git { url, rev, subdir }),
        name().prop_map(|pkgbase| Source::Aur { pkgbase }),
        (word(), option::of(word()), vec(name(), 0..4))
            .prop_map(|(url, rev, pkgbases)| Source::Tree { url, rev, pkgbases }),
    ]
}

fn queue_entry() -> impl Strategy<Value = QueueEntry> {
    (
        name(),
        source(),
        vec(name(), 0..3),
        vec(requirement(), 0..5),
        option::of(any::<u64>()),
        option::of(any::<u32>()),
        vec(hash(), 0..3),
        option::of(".{0,200}"),
        option::of((
            "[0-9]{1,3}:?[a-z0-9.]{1,8}-[0-9]{1,3}(\\.[0-9]{1,2})?",
            1u32..1000,
        )),
        vec(name(), 0..3),
    )
        .prop_map(
            |(
                repo,
                source,
                arches,
                needs,
                source_date_epoch,
                timeout_secs,
                after,
                review,
                bump,
                cascade,
            )| {
                QueueEntry {
                    repo,
                    source,
                    arches,
                    needs,
                    source_date_epoch,
                    timeout_secs,
                    after,
                    review,
                    pkgrel_bump: bump.map(|(version, count)| PkgrelBump { version, count }),
                    cascade,
                }
            },
        )
}

fn artifact() -> impl Strategy<Value = Artifact> {
    (file_name(), hash(), sha(), any::<u64>()).prop_map(|(file_name, blake3, sha256, size)| {
        Artifact {
            file_name,
            blake3,
            sha256,
            size,
        }
    })
}

fn manifest(publisher: PublicKey) -> impl Strategy<Value = RepoManifest> {
    let pkg = (
        file_name(),
        name(),
        "[0-9][0-9a-z.:_+-]{0,12}",
        hash(),
        sha(),
        any::<u64>(),
        hash(),
    )
        .prop_map(
            |(file_name, pkgname, version, blake3, sha256, size, sig)| ManifestPackage {
                file_name,
                pkgname,
                version,
                blake3,
                sha256,
                size,
                sig,
            },
        );
    (
        name(),
        name(),
        1u64..1000,
        hash(),
        time(),
        hash(),
        hash(),
        hash(),
        option::of(hash()),
        vec(pkg, 0..6),
    )
        .prop_map(
            move |(
                repo,
                arch,
                generation,
                prev,
                time,
                db,
                files_db,
                db_sig,
                files_db_sig,
                mut packages,
            )| {
                packages.sort_by(|a, b| a.file_name.cmp(&b.file_name));
                packages.dedup_by(|a, b| a.file_name == b.file_name);
                RepoManifest {
                    version: MANIFEST_VERSION,
                    repo,
                    arch,
                    generation,
                    previous: (generation > 1).then_some(prev),
                    time,
                    publisher,
                    db,
                    files_db,
                    db_sig,
                    files_db_sig,
                    packages,
                }
            },
        )
}

fn body(author: PublicKey) -> impl Strategy<Value = EventBody> {
    let artifacts = vec(artifact(), 1..4).prop_map(|mut a| {
        a.sort_by(|x, y| x.file_name.cmp(&y.file_name));
        a.dedup_by(|x, y| x.file_name == y.file_name);
        a
    });
    prop_oneof![
        queue_entry().prop_map(EventBody::Enqueue),
        hash().prop_map(|entry| EventBody::Cancel { entry }),
        (name(), name()).prop_map(|(pkgbase, repo)| EventBody::Remove { pkgbase, repo }),
        (hash(), any::<u32>(), time()).prop_map(|(entry, attempt, lease_until)| EventBody::Claim {
            entry,
            attempt,
            lease_until
        }),
        (
            hash(),
            any::<u32>(),
            artifacts,
            hash(),
            option::of("[0-9a-f]{40}")
        )
            .prop_map(
                |(entry, attempt, artifacts, log, source_commit)| EventBody::Built {
                    entry,
                    attempt,
                    artifacts,
                    log,
                    source_commit
                }
            ),
        (hash(), any::<u32>(), text(), option::of(hash())).prop_map(
            |(entry, attempt, reason, log)| {
                EventBody::Failed {
                    entry,
                    attempt,
                    reason,
                    log,
                }
            }
        ),
        manifest(author).prop_map(EventBody::Publish),
    ]
}

fn signed_event() -> impl Strategy<Value = (SigningKey, Event)> {
    key().prop_flat_map(|k| {
        let author = PublicKey::from(&k);
        (Just(k), 1u64..u64::MAX, hash(), time(), body(author)).prop_map(
            move |(k, seq, prev, time, body)| {
                let prev = (seq > 1).then_some(prev);
                (k, Event::new(author, seq, prev, time, body))
            },
        )
    })
}

fn policy() -> impl Strategy<Value = (SigningKey, MeshPolicy)> {
    let repo = (name(), vec(name(), 1..4)).prop_map(|(name, arches)| RepoPolicy { name, arches });
    let builders = prop_oneof![
        Just(BuilderPolicy::Any),
        vec(pubkey(), 0..4).prop_map(BuilderPolicy::Keys)
    ];
    (
        key(),
        any::<u64>(),
        time(),
        vec(repo, 1..4),
        vec(pubkey(), 0..4),
        vec(pubkey(), 0..4),
        builders,
        1u32..10,
        1u32..,
        1u32..,
    )
        .prop_map(
            |(
                k,
                policy_version,
                time,
                mut repos,
                maintainers,
                publishers,
                builders,
                quorum,
                lease_secs,
                build_timeout_secs,
            )| {
                repos.sort_by(|a, b| a.name.cmp(&b.name));
                repos.dedup_by(|a, b| a.name == b.name);
                let p = MeshPolicy {
                    version: POLICY_VERSION,
                    root: PublicKey::from(&k),
                    policy_version,
                    time,
                    repos,
                    maintainers,
                    publishers,
                    builders,
                    quorum,
                    lease_secs,
                    build_timeout_secs,
                };
                (k, p)
            },
        )
}

fn announcement() -> impl Strategy<Value = (SigningKey, Announcement)> {
    let caps = (
        name(),
        0u8..5,
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        vec(name(), 0..5),
        name(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(
                arch,
                microarch,
                cores,
                memory_bytes,
                disk_free_bytes,
                tags,
                profile,
                load,
                slots,
                busy,
            )| Capabilities {
                arch,
                microarch,
                cores,
                memory_bytes,
                disk_free_bytes,
                tags,
                profile,
                load,
                slots,
                busy,
            },
        );
    (
        key(),
        0u64..u64::MAX / 2,
        1u64..u64::MAX / 2,
        caps,
        proptest::option::of(any::<u16>()),
    )
        .prop_map(|(k, t, ttl, capabilities, blob_http_port)| {
            let (time, expires) = (Timestamp::from_millis(t), Timestamp::from_millis(t + ttl));
            let a = Announcement {
                version: ANNOUNCEMENT_VERSION,
                node: PublicKey::from(&k),
                time,
                expires,
                capabilities,
                digest: None,
                blob_http_port,
            };
            (k, a)
        })
}

fn round_trip<T: Message + PartialEq + std::fmt::Debug>(
    k: &SigningKey,
    v: &T,
) -> Result<(), TestCaseError> {
    let l = Limits::default();
    let s = Signed::sign(k, v).unwrap();
    let wire = s.to_bytes();
    let back = Signed::<T>::from_bytes(&wire, &l).unwrap();
    prop_assert_eq!(back.id(), s.id());
    prop_assert_eq!(&back.verify_and_decode(&l).unwrap(), v);
    // Encoding is deterministic: the decoded value encodes to the same payload.
    prop_assert_eq!(encode(v).unwrap(), back.payload);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn events_round_trip((k, ev) in signed_event()) {
        round_trip(&k, &ev)?;
    }

    #[test]
    fn policies_round_trip((k, p) in policy()) {
        round_trip(&k, &p)?;
    }

    #[test]
    fn announcements_round_trip((k, a) in announcement()) {
        round_trip(&k, &a)?;
    }

    #[test]
    fn manifests_round_trip_signed_and_bare(k in key(), m_seed in any::<u64>()) {
        let _ = m_seed;
        let m = common::manifest();
        let m = RepoManifest { publisher: PublicKey::from(&k), ..m };
        round_trip(&k, &m)?;
        prop_assert_eq!(RepoManifest::decode(&encode(&m).unwrap(), &Limits::default()).unwrap(), m);
    }

    #[test]
    fn requirements_display_then_parse(r in requirement()) {
        let s = r.to_string();
        prop_assert_eq!(s.parse::<Requirement>().unwrap(), r.clone());
        prop_assert_eq!(Requirement::parse_wire(&s).unwrap(), r);
    }

    #[test]
    fn sizes_format_then_parse(n in any::<u64>()) {
        prop_assert_eq!(parse_size(&format_size(n)).unwrap(), n);
    }

    #[test]
    fn hashes_and_keys_hex_round_trip(h in hash(), k in pubkey()) {
        prop_assert_eq!(h.to_string().parse::<Hash>().unwrap(), h);
        prop_assert_eq!(k.to_string().parse::<PublicKey>().unwrap(), k);
    }
}
