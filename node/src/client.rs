//! A small blocking HTTP client for the node's JSON API, used by `queue`, `status` and tests.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use pacmesh_protocol::{Event, EventBody, Hash, PublicKey, Signed, Timestamp};
use serde_json::Value;

use crate::keys::NodeKey;

pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(base: &str) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        Client {
            base: base.trim_end_matches('/').to_string(),
            agent,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn answer(
        &self,
        path: &str,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value> {
        let mut resp = resp.map_err(|e| anyhow!("cannot reach the node at {}: {e}", self.base))?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .with_context(|| format!("reading the answer to {path}"))?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let msg = v
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            bail!("the node refused ({status}): {msg}");
        }
        Ok(v)
    }

    pub fn get_json(&self, path: &str) -> Result<Value> {
        self.answer(path, self.agent.get(&self.url(path)).call())
    }

    pub fn get_bytes(&self, path: &str) -> Result<Vec<u8>> {
        let mut resp = self
            .agent
            .get(&self.url(path))
            .call()
            .map_err(|e| anyhow!("cannot reach the node at {}: {e}", self.base))?;
        if !resp.status().is_success() {
            bail!("the node answered {} for {path}", resp.status());
        }
        Ok(resp.body_mut().with_config().limit(1 << 30).read_to_vec()?)
    }

    /// Like [`Client::get_bytes`], with `None` for 404 Not Found.
    pub fn get_bytes_opt(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let mut resp = self
            .agent
            .get(&self.url(path))
            .call()
            .map_err(|e| anyhow!("cannot reach the node at {}: {e}", self.base))?;
        if resp.status() == 404 {
            return Ok(None);
        }
        if !resp.status().is_success() {
            bail!("the node answered {} for {path}", resp.status());
        }
        Ok(Some(
            resp.body_mut().with_config().limit(1 << 30).read_to_vec()?,
        ))
    }

    pub fn post_event(&self, bytes: &[u8]) -> Result<Value> {
        let path = "/api/v1/events";
        self.answer(
            path,
            self.agent
                .post(&self.url(path))
                .header("content-type", "application/cbor")
                .send(bytes),
        )
    }

    pub fn put_blob(&self, bytes: &[u8]) -> Result<Hash> {
        let path = "/api/v1/blobs";
        let v = self.answer(path, self.agent.put(&self.url(path)).send(bytes))?;
        v["blake3"]
            .as_str()
            .context("the node did not say the blob's hash")?
            .parse()
            .context("blob hash")
    }

    /// Signs `body` as the next event of `key`'s log (sequence number from the node) and submits
    /// it. Retries once when another client of the same key took the sequence number first.
    pub fn submit(&self, key: &NodeKey, body: EventBody) -> Result<Hash> {
        self.submit_logged(key, None, body)
    }

    /// Like [`Client::submit`], remembering the author's last event in `log` (a small file
    /// beside the key): the next event follows whichever is further, the node's record or the
    /// local one. A maintainer who signs at two nodes that cannot see each other (a partition)
    /// then continues one log instead of signing two events with the same sequence number,
    /// which every node would refuse as equivocation once the partition heals.
    pub fn submit_logged(
        &self,
        key: &NodeKey,
        log: Option<&Path>,
        body: EventBody,
    ) -> Result<Hash> {
        let author = PublicKey::from(key.signing_key());
        let local: Option<(u64, Hash)> = log.and_then(|p| {
            let v: Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
            Some((v["seq"].as_u64()?, v["id"].as_str()?.parse().ok()?))
        });
        let mut last_err = None;
        for _ in 0..3 {
            let head = self.get_json(&format!("/api/v1/authors/{author}/head"))?;
            let mut seq = head["seq"]
                .as_u64()
                .context("the node sent no sequence number")?;
            let mut prev = match head["id"].as_str() {
                Some(s) => Some(s.parse::<Hash>().context("the node sent a bad event id")?),
                None => None,
            };
            if let Some((lseq, lid)) = local
                && lseq > seq
            {
                (seq, prev) = (lseq, Some(lid));
            }
            let next = seq
                .checked_add(1)
                .context("the node sent an impossible sequence number")?;
            let ev = Event::new(author, next, prev, Timestamp::now(), body.clone());
            let signed = Signed::sign(key.signing_key(), &ev)?;
            match self.post_event(&signed.to_bytes()) {
                Ok(v) => {
                    let id: Hash = v["id"]
                        .as_str()
                        .context("no event id in the answer")?
                        .parse()
                        .context("event id")?;
                    if let Some(p) = log {
                        let state = serde_json::json!({ "seq": next, "id": id.to_string() });
                        let tmp = p.with_extension("tmp");
                        std::fs::write(&tmp, state.to_string())
                            .and_then(|()| std::fs::rename(&tmp, p))
                            .with_context(|| {
                                format!("cannot record the author log in {}", p.display())
                            })?;
                    }
                    return Ok(id);
                }
                Err(e) if e.to_string().contains("equivocat") || e.to_string().contains("seq") => {
                    last_err = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("could not submit")))
    }
}
