//! Outbound webhooks: JSON notifications on build failures, publishes and package updates,
//! optionally signed with HMAC-SHA256, retried with backoff.
//!
//! Configured per node (`[[webhook]]` in the config, reloaded on SIGHUP):
//!
//! ```toml
//! [[webhook]]
//! url = "https://chat.example.org/hooks/pacmesh"
//! secret_file = "/etc/pacmesh/webhook.secret"   # or secret = "..."; optional
//! events = ["build_failed", "publish", "package_update"]   # default: all three
//! retries = 5                                   # after the first try
//! ```
//!
//! What triggers a notification is an event the node accepts (from its own executor and
//! publisher, over HTTP, and later from the mesh): a `failed` report → `build_failed` (with the
//! last [`LOG_TAIL_LINES`] lines of the log when the node holds the log blob); a `publish` →
//! `publish`, and `package_update` when the generation adds, upgrades or drops packages against
//! the previous one. Events older than [`MAX_EVENT_AGE`] (history caught up from peers) notify
//! nobody.
//!
//! A delivery is `POST URL` with `Content-Type: application/json`, `User-Agent: pacmesh/VERSION`,
//! `X-Pacmesh-Event: KIND`, `X-Pacmesh-Delivery: ID` (the same on every retry: receivers
//! de-duplicate with it) and, with a secret, `X-Pacmesh-Signature-256: sha256=HEX`, the
//! HMAC-SHA256 of the exact body bytes under the secret (compare in constant time). A 2xx answer
//! is success; a network error, 408, 429 or 5xx is retried after 1 s, 2 s, 4 s … (at most 60 s
//! apart); any other answer is final. Each webhook has a bounded queue ([`QUEUE`]): when a
//! receiver is down for long, new notifications are dropped (counted in
//! `pacmesh_webhook_deliveries_total{result="dropped"}`) rather than held in memory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hmac::{Hmac, Mac};
use pacmesh_protocol::{Event, EventBody, Hash, Timestamp};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::{broadcast, mpsc, watch};

use crate::core::{Accepted, Core};
use crate::metrics::DeliveryLabels;
use crate::store::BlobStore;

/// Lines of the build log sent with `build_failed`.
pub const LOG_TAIL_LINES: usize = 40;
/// Bytes of log tail at most.
pub const LOG_TAIL_BYTES: usize = 16 << 10;
/// Pending notifications per webhook.
pub const QUEUE: usize = 256;
/// Accepted events older than this notify nobody.
pub const MAX_EVENT_AGE: Duration = Duration::from_secs(3600);

/// The kinds of notification.
pub const KINDS: [&str; 3] = ["build_failed", "publish", "package_update"];

/// `[[webhook]]` as written in the config file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookFile {
    pub url: String,
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub events: Option<Vec<String>>,
    pub retries: Option<u32>,
    /// First retry delay in milliseconds (doubles each time, at most 60 s).
    pub retry_delay_ms: Option<u64>,
    pub timeout_secs: Option<u64>,
}

/// A resolved webhook.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    pub secret: Option<Vec<u8>>,
    pub events: Vec<&'static str>,
    pub retries: u32,
    pub retry_delay: Duration,
    pub timeout: Duration,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| "…"))
            .field("events", &self.events)
            .field("retries", &self.retries)
            .finish()
    }
}

impl WebhookFile {
    /// Checks and resolves; `base` resolves a relative `secret_file`.
    pub fn resolve(&self, base: &std::path::Path) -> Result<Webhook> {
        let u = self.url.trim();
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            bail!("webhook url {u:?}: must start with http:// or https://");
        }
        let secret = match (&self.secret, &self.secret_file) {
            (Some(_), Some(_)) => bail!("webhook {u}: give secret or secret_file, not both"),
            (Some(s), None) => Some(s.as_bytes().to_vec()),
            (None, Some(p)) => {
                let p = if p.is_relative() {
                    base.join(p)
                } else {
                    p.clone()
                };
                let s = std::fs::read_to_string(&p).with_context(|| {
                    format!("webhook {u}: cannot read secret_file {}", p.display())
                })?;
                Some(s.trim_end_matches(['\n', '\r']).as_bytes().to_vec())
            }
            (None, None) => None,
        };
        if secret.as_ref().is_some_and(Vec::is_empty) {
            bail!("webhook {u}: the secret is empty");
        }
        let events = match &self.events {
            None => KINDS.to_vec(),
            Some(list) => list
                .iter()
                .map(|e| {
                    KINDS.iter().copied().find(|k| k == e).with_context(|| {
                        format!(
                            "webhook {u}: unknown event {e:?} (use {})",
                            KINDS.join(", ")
                        )
                    })
                })
                .collect::<Result<_>>()?,
        };
        Ok(Webhook {
            url: u.to_string(),
            secret,
            events,
            retries: self.retries.unwrap_or(5),
            retry_delay: Duration::from_millis(self.retry_delay_ms.unwrap_or(1000).max(1)),
            timeout: Duration::from_secs(self.timeout_secs.unwrap_or(10).max(1)),
        })
    }
}

/// One notification to deliver.
#[derive(Debug, Clone)]
pub struct Notification {
    pub kind: &'static str,
    /// Stable across retries (receivers de-duplicate with it).
    pub delivery: String,
    pub body: Arc<Vec<u8>>,
}

/// `sha256=HEX` of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The last `LOG_TAIL_LINES` lines of a stored log, if the blob is here.
pub fn log_tail(core: &Core, log: &Hash) -> Option<Vec<String>> {
    let bytes = core.blobs.read(log).ok()?;
    let start = bytes.len().saturating_sub(LOG_TAIL_BYTES);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // probably cut in the middle
    }
    let from = lines.len().saturating_sub(LOG_TAIL_LINES);
    Some(lines[from..].iter().map(|l| l.to_string()).collect())
}

/// The notifications an accepted event gives (empty for most events).
pub fn notifications(core: &Core, id: &Hash, ev: &Event) -> Vec<(&'static str, Value)> {
    let node = core.key.peer_id().to_string();
    let base = |kind: &str| {
        json!({
            "event": kind,
            "node": node,
            "event_id": id.to_string(),
            "author": ev.author.to_string(),
            "time": ev.time.0,
        })
    };
    let mut out = Vec::new();
    match &ev.body {
        EventBody::Failed {
            entry,
            attempt,
            reason,
            log,
        } => {
            let mut v = base("build_failed");
            v["entry"] = json!(entry.to_string());
            v["attempt"] = json!(attempt);
            v["builder"] = json!(ev.author.to_string());
            v["reason"] = json!(reason);
            v["log"] = json!(log.map(|h| h.to_string()));
            v["log_url"] = json!(format!("/logs/{entry}"));
            v["log_tail"] = json!(log.and_then(|h| log_tail(core, &h)));
            let ingest = core.ingest();
            if let Some(e) = ingest.state().entry(entry)
                && let Some(q) = &e.enqueued
            {
                v["name"] = json!(crate::views::source_label(&q.entry.source));
                v["repo"] = json!(q.entry.repo.to_string());
                v["source"] = crate::views::source(&q.entry.source);
            }
            out.push(("build_failed", v));
        }
        EventBody::Publish(m) => {
            let mut v = base("publish");
            v["repo"] = json!(m.repo.to_string());
            v["arch"] = json!(m.arch.to_string());
            v["generation"] = json!(m.generation);
            v["publisher"] = json!(m.publisher.to_string());
            v["packages"] = m
                .packages
                .iter()
                .map(|p| json!({ "name": p.pkgname.to_string(), "version": p.version, "file": p.file_name.to_string() }))
                .collect();
            out.push(("publish", v));
            // Against the previous generation: what changed.
            let prev = {
                let ingest = core.ingest();
                let state = ingest.state();
                state.generations(&m.repo, &m.arch).and_then(|g| {
                    let below = g.range(..m.generation).next_back()?.1;
                    m.previous
                        .and_then(|p| below.get(&p).cloned())
                        .or_else(|| below.values().next().cloned())
                })
            };
            let old: std::collections::BTreeMap<String, String> = prev
                .iter()
                .flat_map(|p| p.packages.iter())
                .map(|p| (p.pkgname.to_string(), p.version.clone()))
                .collect();
            let new: std::collections::BTreeMap<String, String> = m
                .packages
                .iter()
                .map(|p| (p.pkgname.to_string(), p.version.clone()))
                .collect();
            let updates: Vec<Value> = new
                .iter()
                .filter(|(n, v)| old.get(*n) != Some(*v))
                .map(|(n, v)| json!({ "name": n, "old_version": old.get(n), "new_version": v }))
                .collect();
            let removed: Vec<Value> = old
                .iter()
                .filter(|(n, _)| !new.contains_key(*n))
                .map(|(n, v)| json!({ "name": n, "old_version": v }))
                .collect();
            if !updates.is_empty() || !removed.is_empty() {
                let mut u = base("package_update");
                u["repo"] = json!(m.repo.to_string());
                u["arch"] = json!(m.arch.to_string());
                u["generation"] = json!(m.generation);
                u["updated"] = json!(updates);
                u["removed"] = json!(removed);
                out.push(("package_update", u));
            }
        }
        _ => {}
    }
    out
}

/// Runs the webhooks until `shutdown`: turns accepted events into notifications and hands
/// them to one delivery task per configured webhook. `hooks` changes on SIGHUP.
pub async fn run(core: Arc<Core>, mut shutdown: watch::Receiver<bool>) -> Result<&'static str> {
    let mut hooks = core.reloadable.subscribe();
    let mut accepted = core.subscribe_accepted();
    let mut senders: Vec<(Webhook, mpsc::Sender<Notification>)> = Vec::new();
    let mut current: Vec<Webhook> = Vec::new();
    loop {
        let want = hooks.borrow_and_update().webhooks.clone();
        if want != current {
            // Dropping a sender ends its delivery task once its queue is delivered.
            senders.clear();
            for h in &want {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(deliver(core.clone(), h.clone(), rx, shutdown.clone()));
                senders.push((h.clone(), tx));
            }
            if !want.is_empty() || !current.is_empty() {
                tracing::info!(webhooks = want.len(), "webhooks configured");
            }
            current = want;
        }
        let msg = tokio::select! {
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() { return Ok("webhooks") }
                continue;
            }
            r = hooks.changed() => {
                if r.is_err() { return Ok("webhooks") }
                continue;
            }
            msg = accepted.recv() => msg,
        };
        {
            {
                let Accepted { id, event, .. } = match msg {
                    Ok(a) => a,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "webhooks fell behind the event stream; some notifications are lost"
                        );
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok("webhooks"),
                };
                if senders.is_empty() {
                    continue;
                }
                if Timestamp::now().saturating_since(event.time) > MAX_EVENT_AGE {
                    continue;
                }
                let c = core.clone();
                let ev = event.clone();
                let made = tokio::task::spawn_blocking(move || notifications(&c, &id, &ev)).await?;
                for (kind, body) in made {
                    let body = Arc::new(serde_json::to_vec(&body)?);
                    let n = Notification {
                        kind,
                        delivery: format!("{id}-{kind}"),
                        body,
                    };
                    for (h, tx) in &senders {
                        if !h.events.contains(&kind) {
                            continue;
                        }
                        if tx.try_send(n.clone()).is_err() {
                            tracing::warn!(url = %h.url, kind, "webhook queue full: notification dropped");
                            core.metrics
                                .webhook_deliveries
                                .get_or_create(&DeliveryLabels {
                                    event: kind,
                                    result: "dropped",
                                })
                                .inc();
                        }
                    }
                }
            }
        }
    }
}

/// Delivers one webhook's notifications in order, each with retries.
async fn deliver(
    core: Arc<Core>,
    hook: Webhook,
    mut rx: mpsc::Receiver<Notification>,
    mut shutdown: watch::Receiver<bool>,
) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(hook.timeout))
        .http_status_as_error(false)
        .user_agent(format!("pacmesh/{}", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    while let Some(n) = rx.recv().await {
        let mut delay = hook.retry_delay;
        let mut result = "failed";
        for attempt in 0..=hook.retries {
            let (a, h, n2) = (agent.clone(), hook.clone(), n.clone());
            let r = tokio::task::spawn_blocking(move || post(&a, &h, &n2)).await;
            let (ok, retry, what) = match r {
                Ok(Ok(code)) if (200..300).contains(&code) => (true, false, format!("{code}")),
                Ok(Ok(code)) => (
                    false,
                    code == 408 || code == 429 || code >= 500,
                    format!("answered {code}"),
                ),
                Ok(Err(e)) => (false, true, e),
                Err(e) => (false, false, e.to_string()),
            };
            if ok {
                tracing::debug!(url = %hook.url, kind = n.kind, "webhook delivered");
                result = "ok";
                break;
            }
            if !retry || attempt == hook.retries {
                tracing::warn!(url = %hook.url, kind = n.kind, attempts = attempt + 1, "webhook not delivered: {what}");
                break;
            }
            tracing::info!(url = %hook.url, kind = n.kind, retry_in = ?delay, "webhook delivery failed ({what}); retrying");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            delay = (delay * 2).min(Duration::from_secs(60));
        }
        core.metrics
            .webhook_deliveries
            .get_or_create(&DeliveryLabels {
                event: n.kind,
                result,
            })
            .inc();
    }
}

/// One POST; the status code or a transport error.
fn post(agent: &ureq::Agent, hook: &Webhook, n: &Notification) -> Result<u16, String> {
    let mut req = agent
        .post(&hook.url)
        .header("content-type", "application/json")
        .header("x-pacmesh-event", n.kind)
        .header("x-pacmesh-delivery", &n.delivery);
    if let Some(s) = &hook.secret {
        req = req.header("x-pacmesh-signature-256", signature(s, &n.body));
    }
    match req.send(n.body.as_slice()) {
        Ok(resp) => Ok(resp.status().as_u16()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_hmac() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn config_is_checked() {
        let base = std::path::Path::new("/nonexistent");
        let ok = WebhookFile {
            url: "http://127.0.0.1:9/h".into(),
            secret: Some("s".into()),
            secret_file: None,
            events: Some(vec!["publish".into()]),
            retries: None,
            retry_delay_ms: None,
            timeout_secs: None,
        };
        let h = ok.resolve(base).unwrap();
        assert_eq!((h.events.clone(), h.retries), (vec!["publish"], 5));
        assert!(
            !format!("{h:?}").contains("\"s\""),
            "the secret is not logged"
        );
        let bad = |f: &dyn Fn(&mut WebhookFile)| {
            let mut w = ok.clone();
            f(&mut w);
            format!("{:#}", w.resolve(base).unwrap_err())
        };
        assert!(bad(&|w| w.url = "ftp://x".into()).contains("http://"));
        assert!(bad(&|w| w.events = Some(vec!["nope".into()])).contains("unknown event \"nope\""));
        assert!(bad(&|w| w.secret_file = Some("k".into())).contains("not both"));
        assert!(
            bad(&|w| {
                w.secret = None;
                w.secret_file = Some("k".into())
            })
            .contains("/nonexistent/k")
        );
    }
}
