//! Hostile input: whatever bytes arrive, decoders return an error (the right
//! one) and never panic, allocate without bound or recurse without bound.

mod common;

use common::*;
use pacmesh_protocol::*;
use proptest::prelude::*;

fn lim() -> Limits {
    Limits::default()
}

/// Runs every decoder of untrusted bytes on `bytes`; none may panic.
fn decode_everything(bytes: &[u8]) {
    let l = lim();
    if let Ok(s) = Signed::<Event>::from_bytes(bytes, &l) {
        let _ = s.verify_and_decode(&l);
        let _ = s.id();
    }
    if let Ok(s) = Signed::<MeshPolicy>::from_bytes(bytes, &l) {
        let _ = s.verify_and_decode(&l);
    }
    if let Ok(s) = Signed::<Announcement>::from_bytes(bytes, &l) {
        let _ = s.verify_and_decode(&l);
    }
    let _ = Signed::<RepoManifest>::from_bytes(bytes, &l);
    let _ = Event::decode(bytes, &l);
    let _ = MeshPolicy::decode(bytes, &l);
    let _ = RepoManifest::decode(bytes, &l);
    let _ = Announcement::decode(bytes, &l);
    let _ = hexdump::annotate(bytes);
    let _ = SyncRequest::decode(bytes, &l);
    if let Ok(r) = SyncResponse::decode(bytes, &l) {
        for e in &r.events {
            let _ = e.verify_and_decode(&l);
        }
    }
    if let Ok(r) = pacmesh_protocol::BlobResponse::decode(bytes, &l)
        && let pacmesh_protocol::BlobAnswer::Outboard { size, segments } = &r.answer
    {
        let _ = pacmesh_protocol::outboard_matches(
            &pacmesh_protocol::Hash::new(bytes),
            *size,
            segments,
        );
    }
    let _ = pacmesh_protocol::BlobRequest::decode(bytes, &l);
    if let Ok(s) = std::str::from_utf8(bytes) {
        let _ = s.parse::<Requirement>();
        let _ = Requirement::parse_wire(s);
    }
}

fn signed_enqueue() -> Signed<Event> {
    let k = maintainer();
    Signed::sign(&k, &event(&k, 1, EventBody::Enqueue(queue_entry()))).unwrap()
}

/// CBOR text string header + bytes.
fn cbor_text(s: &str) -> Vec<u8> {
    encode(&s).unwrap()
}

#[test]
fn every_truncation_of_every_message_is_an_error() {
    let l = lim();
    let mut wires = vec![];
    for (_, k, body) in all_bodies() {
        wires.push(Signed::sign(&k, &event(&k, 2, body)).unwrap().to_bytes());
    }
    for wire in &wires {
        for n in 0..wire.len() {
            let err = Signed::<Event>::from_bytes(&wire[..n], &l).unwrap_err();
            assert!(
                matches!(
                    err,
                    DecodeError::Truncated { .. } | DecodeError::Shape { .. }
                ),
                "prefix {n}: {err:?}"
            );
        }
    }
    let policy = Signed::sign(&root(), &policy(1)).unwrap();
    for n in 0..policy.payload.len() {
        assert!(MeshPolicy::decode(&policy.payload[..n], &l).is_err());
    }
}

#[test]
fn oversize_is_refused_before_parsing() {
    let l = lim();
    // Not even CBOR: rejected on length alone.
    let huge = vec![0xffu8; l.max_manifest_bytes + 1];
    assert_eq!(
        Signed::<Event>::from_bytes(&huge, &l).unwrap_err(),
        DecodeError::TooLarge {
            what: "signed envelope",
            len: l.max_manifest_bytes + 1,
            max: l.max_manifest_bytes
        }
    );
    let big = vec![0xffu8; l.max_announcement_bytes + 1];
    assert!(matches!(
        Signed::<Announcement>::from_bytes(&big, &l),
        Err(DecodeError::TooLarge { .. })
    ));
    assert_eq!(
        decode::<u8>(&[0; 10], 9, 8).unwrap_err().to_string(),
        "u8 is 10 bytes, more than the limit of 9 bytes"
    );
    // A header that claims a 2^63-byte string must not allocate it.
    let mut lie = vec![0xa1];
    lie.extend(cbor_text("payload"));
    lie.extend([0x5b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    assert!(Signed::<Event>::from_bytes(&lie, &l).is_err());
    // And an array that claims 2^32 elements.
    let lie = [0x9a, 0xff, 0xff, 0xff, 0xff, 0x00];
    assert!(decode::<Vec<u64>>(&lie, 1 << 20, 8).is_err());
}

#[test]
fn deep_nesting_is_refused_without_stack_overflow() {
    let l = lim();
    for opener in [0x81u8, 0xa1, 0x9f] {
        let mut deep = vec![opener; 200_000];
        deep.push(0x00);
        let err = Signed::<Event>::from_bytes(&deep, &l).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::TooDeep { max: 32, .. } | DecodeError::Shape { .. }
            ),
            "{err:?}"
        );
        decode_everything(&deep);
    }
    // Nested inside an unknown field of an otherwise valid-looking message
    // (skipped as IgnoredAny by the version probe: still bounded).
    let mut v = vec![0xa2];
    v.extend(cbor_text("version"));
    v.push(0x01);
    v.extend(cbor_text("future"));
    v.extend(vec![0x81; 100_000]);
    v.push(0x01);
    assert!(matches!(
        Event::decode(&v, &l),
        Err(DecodeError::TooDeep { .. })
    ));
    // Deep nesting inside an unknown event body (skipped as IgnoredAny) too.
    let k = maintainer();
    let mut payload = encode(&event(&k, 1, EventBody::Cancel { entry: h("x") })).unwrap();
    let i = payload
        .windows(8)
        .position(|w| w == b"\x66cancel\xa1")
        .unwrap();
    payload.truncate(i);
    payload.extend(cbor_text("future"));
    payload.extend(vec![0x81; 1000]);
    payload.push(0);
    assert!(matches!(
        Event::decode(&payload, &l),
        Err(DecodeError::TooDeep { .. })
    ));
}

#[test]
fn wrong_versions_give_a_clear_error() {
    let l = lim();
    let k = maintainer();
    let mut ev = event(&k, 1, EventBody::Enqueue(queue_entry()));
    ev.version = 7;
    let s = Signed::sign(&k, &ev).unwrap();
    let err = s.verify_and_decode(&l).unwrap_err();
    assert_eq!(
        err.to_string(),
        "event version 7 is newer than this node understands (max 1); upgrade pacmesh"
    );
    // Even if the rest of the message is unreadable to this version.
    let mut v = vec![0xa2];
    v.extend(cbor_text("version"));
    v.push(0x07);
    v.extend(cbor_text("body"));
    v.extend(cbor_text("something new"));
    assert_eq!(
        RepoManifest::decode(&v, &l).unwrap_err(),
        DecodeError::NewerVersion {
            what: "manifest",
            found: 7,
            max: 1
        }
    );
    ev.version = 0;
    let s = Signed::sign(&k, &ev).unwrap();
    assert!(matches!(
        s.verify_and_decode(&l),
        Err(VerifyError::Decode(DecodeError::InvalidVersion {
            found: 0,
            ..
        }))
    ));
    // No version at all.
    let mut v = vec![0xa1];
    v.extend(cbor_text("seq"));
    v.push(0x01);
    assert_eq!(
        Event::decode(&v, &l).unwrap_err().to_string(),
        "event: no version field"
    );
    // A newer envelope.
    let wire = signed_enqueue().to_bytes();
    let mut newer = wire.clone();
    let i = newer
        .windows(9)
        .position(|w| w == b"\x67version\x01")
        .unwrap();
    newer[i + 8] = 0x02;
    assert_eq!(
        Signed::<Event>::from_bytes(&newer, &l)
            .unwrap_err()
            .to_string(),
        "signed envelope version 2 is newer than this node understands (max 1); upgrade pacmesh"
    );
}

#[test]
fn unknown_event_kinds_decode_as_unknown_and_keep_the_chain() {
    let l = lim();
    let k = maintainer();
    // Hand-build a payload with a body kind from the future.
    let mut payload = encode(&event(&k, 4, EventBody::Cancel { entry: h("x") })).unwrap();
    let i = payload
        .windows(8)
        .position(|w| w == b"\x66cancel\xa1")
        .unwrap();
    payload.truncate(i);
    payload.extend(cbor_text("rebuild-all"));
    payload.extend(encode(&std::collections::BTreeMap::from([("why", "toolchain")])).unwrap());
    use ed25519_dalek::Signer;
    let sig = k.sign(&signing_message("event", &payload)).to_bytes();
    let s = Signed::<Event>::from_parts(payload, pk(&k), sig);
    let ev = s.verify_and_decode(&l).unwrap();
    assert_eq!(ev.seq, 4);
    assert_eq!(
        ev.body,
        EventBody::Unknown {
            kind: "rebuild-all".into()
        }
    );
    // It cannot be re-encoded (forward the original bytes instead) ...
    assert!(encode(&ev).is_err());
    // ... but the envelope, and so its id, round-trips.
    let back = Signed::<Event>::from_bytes(&s.to_bytes(), &l).unwrap();
    assert_eq!(back.id(), s.id());
}

#[test]
fn unknown_source_kinds_and_requirements_decode() {
    let l = lim();
    let k = maintainer();
    let mut payload = encode(&event(&k, 1, EventBody::Enqueue(queue_entry()))).unwrap();
    // Replace source ["aur", {pkgbase: hello}] by ["hg", {url: x}] (same length
    // trick is not needed: rebuild from parts).
    let src = encode(&Source::Aur {
        pkgbase: name("hello"),
    })
    .unwrap();
    let i = payload.windows(src.len()).position(|w| w == src).unwrap();
    let mut new_src = vec![0x82];
    new_src.extend(cbor_text("hg"));
    new_src.extend(encode(&std::collections::BTreeMap::from([("url", "x")])).unwrap());
    payload.splice(i..i + src.len(), new_src);
    // And the requirement "mem>=2G" by "gpu=nvidia".
    let req = cbor_text("mem>=2G");
    let i = payload.windows(req.len()).position(|w| w == req).unwrap();
    payload.splice(i..i + req.len(), cbor_text("gpu=nvidia"));
    let ev = Event::decode(&payload, &l).unwrap();
    let EventBody::Enqueue(q) = ev.body else {
        panic!()
    };
    assert_eq!(q.source, Source::Unknown { kind: "hg".into() });
    assert_eq!(q.needs, vec![Requirement::Unknown("gpu=nvidia".into())]);
    // A value in a syntax this version does not know (say a newer one's
    // "mem>=1.5G") is Unknown too: never met, but the event stays readable.
    let mut p2 = encode(&event(&k, 1, EventBody::Enqueue(queue_entry()))).unwrap();
    let i = p2.windows(req.len()).position(|w| w == req).unwrap();
    p2.splice(i..i + req.len(), cbor_text("mem>=1.5G"));
    let EventBody::Enqueue(q) = Event::decode(&p2, &l).unwrap().body else {
        panic!()
    };
    assert_eq!(q.needs, vec![Requirement::Unknown("mem>=1.5G".into())]);
    // An empty or control-character requirement is an error.
    let mut p3 = encode(&event(&k, 1, EventBody::Enqueue(queue_entry()))).unwrap();
    let i = p3.windows(req.len()).position(|w| w == req).unwrap();
    p3.splice(i..i + req.len(), cbor_text("mem\n"));
    assert!(Event::decode(&p3, &l).is_err());
}

#[test]
fn sync_response_checks_embedded_envelopes() {
    let l = lim();
    let k = maintainer();
    // An embedded policy envelope is refused by kind.
    let policy = Signed::sign(&root(), &policy(1)).unwrap();
    let mut bytes = vec![0xa3];
    bytes.extend(cbor_text("version"));
    bytes.push(0x01);
    bytes.extend(cbor_text("events"));
    bytes.push(0x81);
    bytes.extend(policy.to_bytes());
    bytes.extend(cbor_text("complete"));
    bytes.push(0xf5);
    let err = SyncResponse::decode(&bytes, &l).unwrap_err();
    assert!(err.to_string().contains("expected a signed event"), "{err}");
    // Too many events.
    let e = Signed::sign(&k, &event(&k, 1, EventBody::Cancel { entry: h("x") })).unwrap();
    let r = SyncResponse {
        version: SYNC_VERSION,
        events: vec![e; 3],
        complete: false,
    };
    let small = Limits {
        max_sync_events: 2,
        ..Limits::default()
    };
    assert!(matches!(
        SyncResponse::decode(&r.encode().unwrap(), &small),
        Err(DecodeError::TooMany {
            what: "sync events",
            len: 3,
            max: 2
        })
    ));
}

#[test]
fn trailing_bytes_are_refused() {
    let mut wire = signed_enqueue().to_bytes();
    wire.push(0x00);
    assert_eq!(
        Signed::<Event>::from_bytes(&wire, &lim()).unwrap_err(),
        DecodeError::TrailingBytes {
            what: "signed envelope",
            extra: 1
        }
    );
}

#[test]
fn invalid_fields_are_refused() {
    let l = lim();
    // A key that is not a curve point.
    let wire = signed_enqueue().to_bytes();
    let signer = pk(&maintainer());
    let i = wire
        .windows(32)
        .rposition(|w| w == signer.as_bytes())
        .unwrap();
    let mut bad = wire.clone();
    bad[i..i + 32].copy_from_slice(&[0xff; 32]);
    let err = Signed::<Event>::from_bytes(&bad, &l).unwrap_err();
    assert!(err.to_string().contains("public key"), "{err}");
    // A hash of the wrong length.
    let mut v = encode(&artifact()).unwrap();
    let i = v.windows(2).position(|w| w == [0x58, 0x20]).unwrap();
    v[i + 1] = 0x1f;
    v.remove(i + 2);
    assert!(decode::<Artifact>(&v, 1 << 20, 8).is_err());
    // A path-traversing file name in a build report.
    let mut a = encode(&artifact()).unwrap();
    let name = cbor_text("hello-1.0-1-x86_64.pkg.tar.zst");
    let i = a.windows(name.len()).position(|w| w == name).unwrap();
    a.splice(i..i + name.len(), cbor_text("../../../etc/passwd"));
    let err = decode::<Artifact>(&a, 1 << 20, 8).unwrap_err();
    assert!(err.to_string().contains("file name"), "{err}");
    // A git URL that git would take as an option.
    let k = maintainer();
    let mut q = queue_entry();
    q.source = Source::Git {
        url: "--upload-pack=evil".into(),
        rev: None,
        subdir: Some("../x".into()),
    };
    let err = Signed::sign(&k, &event(&k, 1, EventBody::Enqueue(q)))
        .unwrap()
        .verify_and_decode(&l)
        .unwrap_err();
    assert!(err.to_string().contains("git url"), "{err}");
}

#[test]
fn too_many_artifacts() {
    let k = builder();
    let l = Limits {
        max_artifacts: 2,
        ..Limits::default()
    };
    let arts: Vec<Artifact> = (0..3)
        .map(|i| Artifact {
            file_name: FileName::new(format!("p{i}.pkg.tar.zst")).unwrap(),
            ..artifact()
        })
        .collect();
    let body = EventBody::Built {
        entry: h("e"),
        attempt: 1,
        artifacts: arts,
        log: h("l"),
        source_commit: None,
    };
    let err = Signed::sign(&k, &event(&k, 2, body))
        .unwrap()
        .verify_and_decode(&l)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "built artifacts: 3 entries, more than the limit of 2"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic(
        which in 0usize..7,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let (_, k, body) = all_bodies().swap_remove(which);
        let wire = Signed::sign(&k, &event(&k, 2, body)).unwrap().to_bytes();
        let mut m = wire.clone();
        for (i, b) in flips {
            let i = i.index(m.len());
            m[i] ^= b | 1;
        }
        decode_everything(&m);
        // A mutated message never verifies as the original event.
        if let Ok(s) = Signed::<Event>::from_bytes(&m, &lim())
            && s.to_bytes() != wire
            && let Ok(ev) = s.verify_and_decode(&lim())
        {
            // Only possible if the mutation hit nothing signed
            // (e.g. a non-canonical envelope encoding).
            let original = Signed::<Event>::from_bytes(&wire, &lim()).unwrap();
            prop_assert_eq!(original.verify_and_decode(&lim()).unwrap(), ev);
        }
    }

    #[test]
    fn random_strings_never_panic_the_requirement_parser(s in "\\PC{0,40}") {
        let _ = s.parse::<Requirement>();
        let _ = Requirement::parse_wire(&s);
    }
}
