//! Signatures, identities, and the mesh policy's rules.

mod common;

use common::*;
use pacmesh_protocol::*;

fn lim() -> Limits {
    Limits::default()
}

#[test]
fn sign_verify_decode_round_trip() {
    for (_, key, body) in all_bodies() {
        let ev = event(&key, 3, body);
        let s = Signed::sign(&key, &ev).unwrap();
        assert_eq!(s.verify().unwrap(), &s.payload[..]);
        let wire = s.to_bytes();
        let back = Signed::<Event>::from_bytes(&wire, &lim()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.id(), s.id());
        assert_eq!(back.verify_and_decode(&lim()).unwrap(), ev);
    }
}

#[test]
fn id_is_blake3_of_the_canonical_envelope() {
    let k = maintainer();
    let s = Signed::sign(&k, &event(&k, 1, EventBody::Enqueue(queue_entry()))).unwrap();
    assert_eq!(s.id(), Hash::new(s.to_bytes()));
    // A different signature over the same payload is a different id.
    let other = Signed::<Event>::from_parts(s.payload.clone(), s.signer, [0; 64]);
    assert_ne!(other.id(), s.id());
}

#[test]
fn tampered_payload_is_a_bad_signature_not_a_decode_error() {
    let k = maintainer();
    let mut s = Signed::sign(&k, &event(&k, 1, EventBody::Enqueue(queue_entry()))).unwrap();
    let last = s.payload.len() - 1;
    s.payload[last] ^= 1;
    assert!(matches!(
        s.verify_and_decode(&lim()),
        Err(VerifyError::BadSignature { kind: "event", .. })
    ));
}

#[test]
fn signature_by_another_key_is_refused() {
    let k = maintainer();
    let s = Signed::sign(&k, &event(&k, 1, EventBody::Enqueue(queue_entry()))).unwrap();
    // Claim it came from someone else.
    let forged = Signed::<Event>::from_parts(s.payload.clone(), pk(&root()), s.sig);
    let err = forged.verify_and_decode(&lim()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("bad signature on event from {}", pk(&root()))
    );
}

#[test]
fn author_must_be_the_signer() {
    // A builder signs an event whose author field names the maintainer.
    let ev = event(&maintainer(), 1, EventBody::Enqueue(queue_entry()));
    assert!(matches!(
        Signed::sign(&builder(), &ev),
        Err(EncodeError::WrongSigner { .. })
    ));
    // Built by hand, it verifies but is refused at decode.
    let payload = encode(&ev).unwrap();
    use ed25519_dalek_sign::sign;
    let sig = sign(&builder(), &signing_message("event", &payload));
    let s = Signed::<Event>::from_parts(payload, pk(&builder()), sig);
    s.verify().unwrap();
    assert!(matches!(
        s.verify_and_decode(&lim()),
        Err(VerifyError::SignerMismatch { .. })
    ));
}

mod ed25519_dalek_sign {
    pub fn sign(k: &pacmesh_protocol::SigningKey, msg: &[u8]) -> [u8; 64] {
        // SigningKey is ed25519-dalek's; its Signer impl is reachable through
        // the re-export.
        use ed25519_dalek::Signer;
        k.sign(msg).to_bytes()
    }
}

#[test]
fn payloads_swapped_between_envelopes_fail() {
    let k = maintainer();
    let a = Signed::sign(&k, &event(&k, 1, EventBody::Enqueue(queue_entry()))).unwrap();
    let b = Signed::sign(&k, &event(&k, 2, EventBody::Cancel { entry: a.id() })).unwrap();
    let swapped = Signed::<Event>::from_parts(b.payload.clone(), a.signer, a.sig);
    assert!(matches!(
        swapped.verify(),
        Err(VerifyError::BadSignature { .. })
    ));
}

#[test]
fn domain_separation_between_kinds() {
    // A policy signature must not verify as anything else, even with the same
    // payload bytes.
    let s = Signed::sign(&root(), &policy(1)).unwrap();
    let as_manifest = Signed::<RepoManifest>::from_parts(s.payload.clone(), s.signer, s.sig);
    assert!(matches!(
        as_manifest.verify(),
        Err(VerifyError::BadSignature {
            kind: "manifest",
            ..
        })
    ));
    // And the envelope says what it is.
    let err = Signed::<Event>::from_bytes(&s.to_bytes(), &lim()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "expected a signed event, got a signed \"policy\""
    );
}

#[test]
fn publish_manifest_must_be_by_the_author() {
    let mut m = manifest();
    m.publisher = pk(&root());
    let k = publisher();
    let s = Signed::sign(&k, &event(&k, 2, EventBody::Publish(m))).unwrap();
    let err = s.verify_and_decode(&lim()).unwrap_err();
    assert!(
        err.to_string()
            .contains("publisher must be the event's author"),
        "{err}"
    );
}

#[test]
fn roles() {
    let p = policy(1);
    assert!(
        p.role_of(&pk(&root()))
            .contains(Roles::ROOT | Roles::MAINTAINER)
    );
    assert!(!p.role_of(&pk(&root())).contains(Roles::PUBLISHER));
    assert!(p.role_of(&pk(&maintainer())).contains(Roles::MAINTAINER));
    assert!(p.role_of(&pk(&publisher())).contains(Roles::PUBLISHER));
    // BuilderPolicy::Any: everybody builds.
    assert!(p.role_of(&pk(&key(99))).contains(Roles::BUILDER));
    let mut q = p.clone();
    q.builders = BuilderPolicy::Keys(vec![pk(&builder())]);
    assert_eq!(q.role_of(&pk(&key(99))), Roles::NONE);
    assert_eq!(q.role_of(&pk(&builder())), Roles::BUILDER);
    assert_eq!(format!("{}", q.role_of(&pk(&root()))), "root+maintainer");
}

#[test]
fn authorize_by_role() {
    let mut p = policy(1);
    p.builders = BuilderPolicy::Keys(vec![pk(&builder())]);
    for (kind, signer, body) in all_bodies() {
        p.authorize(&pk(&signer), &body)
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        // A stranger may do none of it.
        let err = p.authorize(&pk(&key(99)), &body).unwrap_err();
        assert!(
            matches!(err, PolicyError::NotAllowed { .. }),
            "{kind}: {err}"
        );
    }
    let err = p
        .authorize(&pk(&builder()), &EventBody::Enqueue(queue_entry()))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} (builder) may not enqueue: needs role maintainer",
            pk(&builder())
        )
    );
    let mut q = queue_entry();
    q.repo = name("nope");
    assert_eq!(
        p.authorize(&pk(&maintainer()), &EventBody::Enqueue(q))
            .unwrap_err()
            .to_string(),
        "repository nope is not in the mesh policy"
    );
    let mut q = queue_entry();
    q.arches = vec![name("riscv64")];
    assert_eq!(
        p.authorize(&pk(&maintainer()), &EventBody::Enqueue(q))
            .unwrap_err()
            .to_string(),
        "repository extra for riscv64 is not in the mesh policy"
    );
}

#[test]
fn policy_updates_need_root_and_a_higher_counter() {
    let l = lim();
    let current = MeshPolicy::verify_initial(
        &Signed::sign(&root(), &policy(5)).unwrap(),
        &pk(&root()),
        &l,
    )
    .unwrap();

    // Newer, by root: accepted.
    let newer = Signed::sign(&root(), &policy(6)).unwrap();
    assert_eq!(current.accept_update(&newer, &l).unwrap().policy_version, 6);

    // Same or older counter: refused.
    for v in [5, 4] {
        let s = Signed::sign(&root(), &policy(v)).unwrap();
        assert_eq!(
            current.accept_update(&s, &l).unwrap_err(),
            PolicyError::NotNewer {
                current: 5,
                offered: v
            }
        );
    }

    // A policy for another mesh (another root): refused, even if well signed.
    let mut other = policy(9);
    other.root = pk(&maintainer());
    let s = Signed::sign(&maintainer(), &other).unwrap();
    assert!(matches!(
        current.accept_update(&s, &l),
        Err(PolicyError::WrongRoot { .. })
    ));

    // Root's policy re-signed by another key: refused.
    let good = Signed::sign(&root(), &policy(7)).unwrap();
    let forged =
        Signed::<MeshPolicy>::from_parts(good.payload.clone(), pk(&maintainer()), good.sig);
    assert!(matches!(
        current.accept_update(&forged, &l),
        Err(PolicyError::Verify(VerifyError::BadSignature { .. }))
    ));
}

#[test]
fn policy_validation() {
    let l = lim();
    let bad = |f: fn(&mut MeshPolicy)| {
        let mut p = policy(1);
        f(&mut p);
        let s = Signed::sign(&root(), &p).unwrap();
        s.verify_and_decode(&l).unwrap_err().to_string()
    };
    assert!(bad(|p| p.quorum = 0).contains("quorum"));
    assert!(bad(|p| p.repos.clear()).contains("at least one repository"));
    assert!(bad(|p| p.repos[0].arches.clear()).contains("no architectures"));
    assert!(
        bad(|p| {
            let r = p.repos[0].clone();
            p.repos.push(r)
        })
        .contains("listed twice")
    );
}

#[test]
fn event_chain_rules() {
    let k = maintainer();
    let l = lim();
    let mut ev = event(&k, 1, EventBody::Cancel { entry: h("x") });
    ev.prev = Some(h("y"));
    let err = Signed::sign(&k, &ev)
        .unwrap()
        .verify_and_decode(&l)
        .unwrap_err();
    assert!(err.to_string().contains("seq 1"), "{err}");
    ev.seq = 0;
    ev.prev = None;
    let err = Signed::sign(&k, &ev)
        .unwrap()
        .verify_and_decode(&l)
        .unwrap_err();
    assert!(err.to_string().contains("start at 1"), "{err}");
}

#[test]
fn non_publish_events_keep_the_small_limit() {
    let k = builder();
    let l = Limits {
        max_event_bytes: 400,
        ..Limits::default()
    };
    let small = event(&k, 2, EventBody::Cancel { entry: h("x") });
    Signed::sign(&k, &small)
        .unwrap()
        .verify_and_decode(&l)
        .unwrap();
    let big = event(
        &k,
        2,
        EventBody::Failed {
            entry: h("x"),
            attempt: 1,
            reason: "x".repeat(1000),
            log: None,
        },
    );
    let err = Signed::sign(&k, &big)
        .unwrap()
        .verify_and_decode(&l)
        .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Decode(DecodeError::TooLarge { max: 400, .. })
        ),
        "{err}"
    );
    // A publish event may use the manifest limit.
    let p = publisher();
    let publish = event(&p, 2, EventBody::Publish(manifest()));
    assert!(Signed::sign(&p, &publish).unwrap().payload.len() > 400);
    Signed::sign(&p, &publish)
        .unwrap()
        .verify_and_decode(&l)
        .unwrap();
}

#[test]
fn announcements_and_requirements() {
    let a = announcement();
    let s = Signed::sign(&builder(), &a).unwrap();
    let back = s.verify_and_decode(&lim()).unwrap();
    assert_eq!(back, a);
    let needs: Vec<Requirement> = ["arch=x86_64", "mem>=16G", "tag=bigmem", "profile=chroot"]
        .iter()
        .map(|r| r.parse().unwrap())
        .collect();
    matches(&back.capabilities, &needs).unwrap();
    let err = matches(&back.capabilities, &["cores>=16".parse().unwrap()]).unwrap_err();
    assert_eq!(err.to_string(), "needs cores>=16, node has cores=8");
}

#[test]
fn hash_and_key_serde_in_json_is_hex() {
    let v = serde_json::to_value(artifact()).unwrap();
    assert_eq!(v["blake3"], serde_json::json!(h("package").to_hex()));
    let back: Artifact = serde_json::from_value(v).unwrap();
    assert_eq!(back, artifact());
    let k: PublicKey = serde_json::from_value(serde_json::json!(pk(&root()).to_hex())).unwrap();
    assert_eq!(k, pk(&root()));
}
