//! [`MeshPolicy`]: who may do what in a mesh, signed by the mesh's root key.
//!
//! A mesh is named by its root public key. The root signs successive policies
//! with an increasing `policy_version`; a node replaces its policy only with a
//! newer one signed by the same root ([`MeshPolicy::accept_update`]). That is
//! how keys are added, rotated and revoked. The root key itself cannot be
//! rotated in version 1: a new root is a new mesh.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codec::{DecodeError, Limits, Message, check_len, invalid};
use crate::{EventBody, Name, PublicKey, Signed, Timestamp, VerifyError};

/// The newest policy format version this build understands and writes.
pub const POLICY_VERSION: u32 = 1;

/// The signed rules of a mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshPolicy {
    /// Format version ([`POLICY_VERSION`]).
    pub version: u32,
    /// The mesh's root key: names the mesh and signs its policies.
    pub root: PublicKey,
    /// Counter: a policy replaces another only if this is higher.
    pub policy_version: u64,
    /// When it was signed.
    pub time: Timestamp,
    /// Repositories the mesh builds and publishes.
    pub repos: Vec<RepoPolicy>,
    /// Keys that may enqueue, cancel and remove.
    pub maintainers: Vec<PublicKey>,
    /// Keys that may publish manifests and sign repository databases.
    pub publishers: Vec<PublicKey>,
    /// Whose build reports count.
    pub builders: BuilderPolicy,
    /// Matching build reports (same artifact hashes, from different builders)
    /// a publisher needs before it publishes a build. At least 1.
    pub quorum: u32,
    /// Default claim lease, seconds.
    pub lease_secs: u32,
    /// Default build timeout, seconds.
    pub build_timeout_secs: u32,
}

/// A repository and its architectures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoPolicy {
    /// Repository name.
    pub name: Name,
    /// Architectures (at least one).
    pub arches: Vec<Name>,
}

/// Which builders' reports count. Wire: `"any"` or `{"keys": [..]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BuilderPolicy {
    /// Any node may claim and report.
    Any,
    /// Only these keys.
    Keys(Vec<PublicKey>),
}

/// A set of roles (bit set).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Roles(u8);

impl Roles {
    /// No role.
    pub const NONE: Roles = Roles(0);
    /// The mesh root.
    pub const ROOT: Roles = Roles(1);
    /// May enqueue, cancel, remove.
    pub const MAINTAINER: Roles = Roles(2);
    /// May publish.
    pub const PUBLISHER: Roles = Roles(4);
    /// May claim and report builds.
    pub const BUILDER: Roles = Roles(8);

    /// Whether every role in `other` is in `self`.
    pub const fn contains(self, other: Roles) -> bool {
        self.0 & other.0 == other.0
    }
    /// Whether no role is held.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}
impl std::ops::BitOr for Roles {
    type Output = Roles;
    fn bitor(self, o: Roles) -> Roles {
        Roles(self.0 | o.0)
    }
}
impl std::ops::BitOrAssign for Roles {
    fn bitor_assign(&mut self, o: Roles) {
        self.0 |= o.0
    }
}
impl fmt::Debug for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Roles({self})")
    }
}
impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Roles::ROOT, "root"),
            (Roles::MAINTAINER, "maintainer"),
            (Roles::PUBLISHER, "publisher"),
            (Roles::BUILDER, "builder"),
        ];
        let held: Vec<&str> = names
            .iter()
            .filter(|(r, _)| self.contains(*r))
            .map(|(_, n)| *n)
            .collect();
        if held.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&held.join("+"))
        }
    }
}

/// Why a policy, a policy update or an action under a policy is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The signed policy did not verify or decode.
    #[error("policy: {0}")]
    Verify(#[from] VerifyError),
    /// Signed by a key other than the mesh root.
    #[error("policy is for mesh {found}, expected mesh {expected}")]
    WrongRoot {
        /// The mesh root we trust.
        expected: PublicKey,
        /// The root in the policy.
        found: PublicKey,
    },
    /// Not newer than the current policy.
    #[error("policy version {offered} does not replace current version {current} (must be higher)")]
    NotNewer {
        /// The current counter.
        current: u64,
        /// The offered counter.
        offered: u64,
    },
    /// The key lacks the role the action needs.
    #[error("{key} ({held}) may not {action}: needs role {needed}")]
    NotAllowed {
        /// The acting key.
        key: PublicKey,
        /// Its roles.
        held: Roles,
        /// The needed role.
        needed: Roles,
        /// What it tried.
        action: String,
    },
    /// The repository or architecture is not in the policy.
    #[error("repository {repo}{} is not in the mesh policy", arch.as_ref().map(|a| format!(" for {a}")).unwrap_or_default())]
    UnknownRepo {
        /// Repository.
        repo: Name,
        /// Architecture, if that was the problem.
        arch: Option<Name>,
    },
}

impl MeshPolicy {
    /// The roles `key` holds under this policy. The root holds only `ROOT`
    /// unless it is also listed (`pacmesh mesh init` lists it by default).
    pub fn role_of(&self, key: &PublicKey) -> Roles {
        let mut r = Roles::NONE;
        if *key == self.root {
            r |= Roles::ROOT;
        }
        if self.maintainers.contains(key) {
            r |= Roles::MAINTAINER;
        }
        if self.publishers.contains(key) {
            r |= Roles::PUBLISHER;
        }
        match &self.builders {
            BuilderPolicy::Any => r |= Roles::BUILDER,
            BuilderPolicy::Keys(k) if k.contains(key) => r |= Roles::BUILDER,
            BuilderPolicy::Keys(_) => {}
        }
        r
    }

    /// The repository named `name`.
    pub fn repo(&self, name: &str) -> Option<&RepoPolicy> {
        self.repos.iter().find(|r| r.name == name)
    }

    /// The PubSub topic for this mesh's events.
    pub fn events_topic(&self) -> String {
        crate::events_topic(&self.root)
    }

    /// Whether `author` may sign an event with `body` under this policy:
    /// maintainers enqueue, cancel and remove; builders claim and report;
    /// publishers publish. Repositories and architectures named must be in the
    /// policy. Unknown kinds need any role (so they can be stored and
    /// forwarded, but not by strangers).
    pub fn authorize(&self, author: &PublicKey, body: &EventBody) -> Result<(), PolicyError> {
        let held = self.role_of(author);
        let (needed, action) = match body {
            EventBody::Enqueue(q) => {
                let repo = self.repo(&q.repo).ok_or_else(|| PolicyError::UnknownRepo {
                    repo: q.repo.clone(),
                    arch: None,
                })?;
                if let Some(a) = q.arches.iter().find(|a| !repo.arches.contains(a)) {
                    return Err(PolicyError::UnknownRepo {
                        repo: q.repo.clone(),
                        arch: Some(a.clone()),
                    });
                }
                (Roles::MAINTAINER, "enqueue")
            }
            EventBody::Cancel { .. } => (Roles::MAINTAINER, "cancel"),
            EventBody::Approve { .. } => (Roles::MAINTAINER, "approve"),
            EventBody::Remove { repo, .. } => {
                if self.repo(repo).is_none() {
                    return Err(PolicyError::UnknownRepo {
                        repo: repo.clone(),
                        arch: None,
                    });
                }
                (Roles::MAINTAINER, "remove")
            }
            EventBody::Claim { .. } => (Roles::BUILDER, "claim"),
            EventBody::Built { .. } => (Roles::BUILDER, "report a build"),
            EventBody::Failed { .. } => (Roles::BUILDER, "report a failure"),
            EventBody::Publish(m) => {
                let ok = self
                    .repo(&m.repo)
                    .is_some_and(|r| r.arches.contains(&m.arch));
                if !ok {
                    return Err(PolicyError::UnknownRepo {
                        repo: m.repo.clone(),
                        arch: Some(m.arch.clone()),
                    });
                }
                (Roles::PUBLISHER, "publish")
            }
            EventBody::Unknown { .. } => {
                if held.is_empty() {
                    return Err(PolicyError::NotAllowed {
                        key: *author,
                        held,
                        needed: Roles::BUILDER,
                        action: format!("send an event of kind {:?}", body.kind()),
                    });
                }
                return Ok(());
            }
        };
        if held.contains(needed) {
            Ok(())
        } else {
            Err(PolicyError::NotAllowed {
                key: *author,
                held,
                needed,
                action: action.to_string(),
            })
        }
    }

    /// Accepts a first policy for the mesh named by `root`: verifies the
    /// signature, decodes, and checks that it is the policy of that mesh and
    /// signed by its root.
    pub fn verify_initial(
        signed: &Signed<MeshPolicy>,
        root: &PublicKey,
        limits: &Limits,
    ) -> Result<MeshPolicy, PolicyError> {
        let p = signed.verify_and_decode(limits)?;
        if p.root != *root {
            return Err(PolicyError::WrongRoot {
                expected: *root,
                found: p.root,
            });
        }
        Ok(p)
    }

    /// Accepts `new` as the replacement of `self` only if it is signed by the
    /// same root and its `policy_version` is higher.
    pub fn accept_update(
        &self,
        new: &Signed<MeshPolicy>,
        limits: &Limits,
    ) -> Result<MeshPolicy, PolicyError> {
        let p = Self::verify_initial(new, &self.root, limits)?;
        if p.policy_version <= self.policy_version {
            return Err(PolicyError::NotNewer {
                current: self.policy_version,
                offered: p.policy_version,
            });
        }
        Ok(p)
    }
}

impl Message for MeshPolicy {
    const KIND: &'static str = "policy";
    const VERSION: u32 = POLICY_VERSION;

    fn max_bytes(limits: &Limits) -> usize {
        limits.max_policy_bytes
    }

    fn claimed_signer(&self) -> Option<&PublicKey> {
        Some(&self.root)
    }

    fn validate(&self, limits: &Limits) -> Result<(), DecodeError> {
        if self.repos.is_empty() {
            return Err(invalid(
                "policy repos",
                "a mesh needs at least one repository",
            ));
        }
        check_len("policy repos", self.repos.len(), limits.max_keys)?;
        let mut names: Vec<&str> = self.repos.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid(
                "policy repos",
                format!("repository {:?} listed twice", w[0]),
            ));
        }
        for r in &self.repos {
            if r.arches.is_empty() {
                return Err(invalid(
                    "policy repos",
                    format!("repository {:?} has no architectures", r.name.as_str()),
                ));
            }
            check_len("policy repo arches", r.arches.len(), limits.max_list)?;
        }
        check_len(
            "policy maintainers",
            self.maintainers.len(),
            limits.max_keys,
        )?;
        check_len("policy publishers", self.publishers.len(), limits.max_keys)?;
        if let BuilderPolicy::Keys(k) = &self.builders {
            check_len("policy builders", k.len(), limits.max_keys)?;
        }
        if self.quorum == 0 {
            return Err(invalid("policy quorum", "must be at least 1"));
        }
        if self.lease_secs == 0 || self.build_timeout_secs == 0 {
            return Err(invalid(
                "policy timeouts",
                "lease and build timeout must be positive",
            ));
        }
        Ok(())
    }
}
