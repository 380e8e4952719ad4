//! What people look at: the status page, package histories, live build logs, `/metrics`.
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET /` | status page: queue by state with filters (`?state=`, `?q=`, `?repo=`, `?limit=`), builds running now, nodes, repository generations |
//! | `GET /pkg?name=NAME` | one package's history: entries, builds (builder, attempt, outcome, files), generations it was published in |
//! | `GET /logs/ENTRY` | a build log: HTML page for browsers; `?format=sse` (or `Accept: text/event-stream`) server-sent events; otherwise text — a running build's log streamed as it is produced, a finished one from its log blob (`Content-Encoding: zstd` when the client accepts it) |
//! | `GET /metrics` | Prometheus metrics, OpenMetrics text ([`crate::metrics`]) |
//!
//! Server-rendered HTML with a little vanilla JavaScript (instant text filter, auto refresh,
//! following a log): no build step, readable on a phone. Everything interpolated into HTML is
//! escaped.
//!
//! # Server-sent events of `/logs/ENTRY?format=sse`
//!
//! | event | data |
//! | --- | --- |
//! | `meta` | JSON `{"builder", "attempt", "skipped"}`: a live stream starts (`skipped`: earlier lines not kept in memory) |
//! | `message` (default) | one log line |
//! | `lost` | number of lines this follower missed because it was too slow |
//! | `end` | how the build ended (`built`, `failed`, `abandoned`, …); the stream closes |
//! | `finished` | JSON `{"state", "log_url"}`: the build is over; its stored log is at `log_url` |
//! | `waiting` | why there is no log yet (waiting, claimed by a node whose log is not relayed) |

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use pacmesh_protocol::{Hash, Timestamp};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::core::Core;
use crate::livelog::LiveEvent;
use crate::state::{EntryRecord, EntryStatus, QueueState, ReportOutcome};
use crate::store::BlobStore;

/// Rows shown by default on the status page (`?limit=all` shows every entry).
pub const DEFAULT_LIMIT: usize = 1000;
/// How long a log follower waits for something to happen before the stream is closed (the
/// browser reconnects by itself).
pub const FOLLOW_IDLE: Duration = Duration::from_secs(600);

pub fn routes() -> Router<Arc<Core>> {
    Router::new()
        .route("/", get(index))
        .route("/pkg", get(package))
        .route("/logs/{entry}", get(logs))
        .route("/metrics", get(metrics))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())
}

/// OpenMetrics text when the scraper asks for it (Prometheus does), the Prometheus text
/// format 0.0.4 otherwise.
async fn metrics(State(core): State<Arc<Core>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    match blocking(move || crate::metrics::scrape(&core)).await {
        Ok(text) if openmetrics => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            crate::metrics::to_prometheus_text(&text),
        )
            .into_response(),
        Err(r) => r,
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers: escaping, times, URLs.

/// HTML-escapes `s` into `out`.
pub fn esc_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    esc_into(&mut o, s);
    o
}

/// Percent-encodes `s` for a query value.
pub fn url_enc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

/// `2026-01-01 12:00:00Z` from milliseconds since the epoch.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `5 s ago`, `3 min ago`, `2 h ago`, `4 d ago`; `in 20 s` for the future.
pub fn ago(ms: u64, now: Timestamp) -> String {
    let (d, fut) = if ms > now.0 {
        (ms - now.0, true)
    } else {
        (now.0 - ms, false)
    };
    let s = d / 1000;
    let t = match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    };
    if fut {
        format!("in {t}")
    } else {
        format!("{t} ago")
    }
}

fn short(s: &str) -> &str {
    s.get(..12).unwrap_or(s)
}

fn human(n: u64) -> String {
    crate::health::human_bytes(n)
}

const STYLE: &str = r#"
:root{--bg:#fff;--fg:#1b1f23;--mut:#6a737d;--line:#e1e4e8;--chip:#f6f8fa;--ok:#22863a;--bad:#cb2431;--run:#b08800;--pub:#005cc5}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#c9d1d9;--mut:#8b949e;--line:#30363d;--chip:#161b22;--ok:#3fb950;--bad:#f85149;--run:#d29922;--pub:#58a6ff}}
*{box-sizing:border-box}body{margin:0;font:15px/1.45 system-ui,sans-serif;background:var(--bg);color:var(--fg)}
header,main{padding:.6rem 1rem;max-width:80rem;margin:auto}header{border-bottom:1px solid var(--line)}
h1{font-size:1.2rem;margin:.2rem 0}h1 .mono{word-break:break-all;font-size:.75em;font-weight:400}h2{font-size:1.05rem;margin:1.2rem 0 .4rem}a{color:var(--pub)}
.mut{color:var(--mut)}code,.mono{font-family:ui-monospace,monospace;font-size:.9em}
.chips{display:flex;flex-wrap:wrap;gap:.35rem;margin:.4rem 0}.chip{padding:.15rem .6rem;border:1px solid var(--line);border-radius:1rem;background:var(--chip);text-decoration:none;color:var(--fg)}
.chip.on{border-color:var(--pub);font-weight:600}
.tbl{overflow-x:auto}table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid var(--line);vertical-align:top}
th{font-weight:600;font-size:.85rem;color:var(--mut)}td.r{word-break:break-word;max-width:32rem}
.st{font-weight:600}.st-published,.st-built{color:var(--ok)}.st-failed{color:var(--bad)}.st-building,.st-claimed{color:var(--run)}.st-cancelled{color:var(--mut)}
.banner{padding:.5rem .8rem;border:1px solid var(--bad);color:var(--bad);border-radius:.4rem;margin:.6rem 0}
input[type=search]{width:100%;max-width:24rem;padding:.35rem .5rem;font:inherit;background:var(--bg);color:var(--fg);border:1px solid var(--line);border-radius:.3rem}
pre#log{background:var(--chip);border:1px solid var(--line);padding:.6rem;overflow-x:auto;white-space:pre-wrap;word-break:break-all;font-size:.82rem;min-height:8rem}
@media (max-width:40rem){.hide-s{display:none}td,th{padding:.25rem .3rem}}
"#;

fn page_head(out: &mut String, title: &str) {
    out.push_str("<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width,initial-scale=1\"><link rel=icon href=\"data:,\"><title>");
    esc_into(out, title);
    out.push_str("</title><style>");
    out.push_str(STYLE);
    out.push_str("</style></head><body>");
}

// ---------------------------------------------------------------------------------------------
// The status page.

#[derive(Debug, Default, Deserialize)]
pub struct IndexQuery {
    pub state: Option<String>,
    pub q: Option<String>,
    pub repo: Option<String>,
    pub limit: Option<String>,
}

/// The display state of an entry: `claimed` becomes `building` when its log is streaming here.
fn display_state(core: &Core, e: &EntryRecord, st: &EntryStatus<'_>) -> &'static str {
    match st {
        EntryStatus::Claimed { .. } if core.live_logs.is_active(&e.id) => "building",
        other => other.label(),
    }
}

const STATES: [&str; 8] = [
    "waiting",
    "review",
    "claimed",
    "building",
    "built",
    "failed",
    "cancelled",
    "published",
];

async fn index(State(core): State<Arc<Core>>, Query(q): Query<IndexQuery>) -> Response {
    match blocking(move || render_index(&core, &q, Timestamp::now())).await {
        Ok(html) => Html(html).into_response(),
        Err(r) => r,
    }
}

/// Renders the status page (public for the benchmark).
pub fn render_index(core: &Core, q: &IndexQuery, now: Timestamp) -> String {
    let status = crate::views::status(core, now);
    let ingest = core.ingest();
    let state = ingest.state();
    let want_state = q.state.as_deref().filter(|s| STATES.contains(s));
    let needle = q.q.as_deref().unwrap_or("").trim().to_lowercase();
    let want_repo = q.repo.as_deref().filter(|r| !r.is_empty());
    let limit = match q.limit.as_deref() {
        Some("all") | Some("0") => usize::MAX,
        Some(n) => n.parse().unwrap_or(DEFAULT_LIMIT).max(1),
        None => DEFAULT_LIMIT,
    };

    let mut out = String::with_capacity(64 << 10);
    page_head(&mut out, "pacmesh node");
    out.push_str("<header><h1>pacmesh node <span class=mono>");
    esc_into(&mut out, status["node"]["node_id"].as_str().unwrap_or("?"));
    out.push_str("</span></h1><div class=mut>mesh ");
    esc_into(
        &mut out,
        short(status["mesh"]["root"].as_str().unwrap_or("?")),
    );
    let _ = write!(
        out,
        " · policy v{} · quorum {} · {} events · <a href=\"/metrics\">metrics</a> · <a href=\"/api/v1/status\">JSON</a>",
        status["mesh"]["policy_version"], status["mesh"]["quorum"], status["events"]["applied"]
    );
    out.push_str("</div></header><main>");
    if let Some(why) = core.health.refusal() {
        out.push_str("<div class=banner id=health>This node refuses new builds: ");
        esc_into(&mut out, &why);
        out.push_str("</div>");
    }

    // Entries with their display state, counted per state, newest first.
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut rows: Vec<(&EntryRecord, EntryStatus<'_>, &'static str)> = Vec::new();
    for e in state.entries() {
        let st = state.status(e, now);
        let ds = display_state(core, e, &st);
        *counts.entry(ds).or_default() += 1;
        rows.push((e, st, ds));
    }
    rows.sort_by_key(|(e, _, _)| std::cmp::Reverse(e.enqueued.as_ref().map_or(0, |q| q.time.0)));

    // Running builds.
    let active = core.live_logs.active();
    out.push_str("<h2>Building now</h2>");
    if active.is_empty() {
        out.push_str("<p class=mut>Nothing is building on this node.</p>");
    } else {
        out.push_str("<div class=tbl><table id=building><tr><th>entry</th><th>package</th><th>builder</th><th>started</th><th>lines</th><th></th></tr>");
        for a in &active {
            let name = state
                .entry(&a.entry)
                .and_then(|e| e.enqueued.as_ref())
                .map(|q| crate::views::source_label(&q.entry.source))
                .unwrap_or_default();
            let id = a.entry.to_string();
            let _ = write!(
                out,
                "<tr><td class=mono>{}</td><td>{}</td><td class=mono>{}</td><td>{}</td><td>{}</td><td><a href=\"/logs/{id}\">live log</a></td></tr>",
                short(&id),
                esc(&name),
                short(&a.builder.to_string()),
                ago(a.started.0, now),
                a.lines
            );
        }
        out.push_str("</table></div>");
    }

    // The queue.
    out.push_str("<h2>Queue</h2><div class=chips>");
    let link = |st: Option<&str>| {
        let mut l = String::from("/?");
        if let Some(s) = st {
            let _ = write!(l, "state={s}&");
        }
        if let Some(r) = want_repo {
            let _ = write!(l, "repo={}&", url_enc(r));
        }
        if !needle.is_empty() {
            let _ = write!(l, "q={}&", url_enc(&needle));
        }
        l.pop();
        l
    };
    let _ = write!(
        out,
        "<a class=\"chip{}\" href=\"{}\">all {}</a>",
        if want_state.is_none() { " on" } else { "" },
        esc(&link(None)),
        rows.len()
    );
    for s in STATES {
        let n = counts.get(s).copied().unwrap_or(0);
        let _ = write!(
            out,
            "<a class=\"chip{}\" data-state=\"{s}\" href=\"{}\">{s} {n}</a>",
            if want_state == Some(s) { " on" } else { "" },
            esc(&link(Some(s))),
        );
    }
    out.push_str("</div><form method=get action=\"/\">");
    if let Some(s) = want_state {
        let _ = write!(out, "<input type=hidden name=state value=\"{s}\">");
    }
    out.push_str("<input type=search name=q id=filter placeholder=\"filter: name, repo, state, builder…\" value=\"");
    esc_into(&mut out, &needle);
    out.push_str("\" autocomplete=off> <label class=mut><input type=checkbox id=auto checked> auto refresh</label></form>");

    out.push_str("<div class=tbl><table id=queue><thead><tr><th>entry</th><th>package</th><th class=hide-s>repo</th><th>state</th><th>detail</th><th class=hide-s>enqueued</th><th>log</th></tr></thead><tbody>");
    let mut shown = 0usize;
    let mut matching = 0usize;
    for (e, st, ds) in &rows {
        if want_state.is_some_and(|w| w != *ds) {
            continue;
        }
        let Some(enq) = &e.enqueued else { continue };
        let name = crate::views::source_label(&enq.entry.source);
        let repo = enq.entry.repo.as_str();
        if want_repo.is_some_and(|r| r != repo) {
            continue;
        }
        let detail = match st {
            EntryStatus::Claimed {
                by,
                attempt,
                lease_until,
            } => format!(
                "{} by {} (attempt {attempt}, lease {})",
                if *ds == "building" {
                    "building"
                } else {
                    "claimed"
                },
                short(&by.to_string()),
                ago(lease_until.0, now)
            ),
            EntryStatus::Built { builds } => format!(
                "built by {}",
                builds
                    .iter()
                    .map(|r| short(&r.builder.to_string()).to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            EntryStatus::Failed { by, reason, .. } => {
                format!("{} (by {})", reason, short(&by.to_string()))
            }
            EntryStatus::Cancelled { by } => format!("by {}", short(&by.to_string())),
            EntryStatus::Published(p) => {
                format!("{}/{} generation {}", p.repo, p.arch, p.generation)
            }
            EntryStatus::Waiting => String::new(),
            EntryStatus::Review { .. } => "waiting for a maintainer's approval (queue why)".into(),
        };
        let id = e.id.to_string();
        if !needle.is_empty() {
            let hay = format!("{id} {name} {repo} {ds} {detail}").to_lowercase();
            if !hay.contains(&needle) {
                continue;
            }
        }
        matching += 1;
        if shown >= limit {
            continue;
        }
        shown += 1;
        let has_log = *ds == "building" || *ds == "claimed" || latest_log(e).is_some();
        let _ = write!(
            out,
            "<tr data-state=\"{ds}\"><td class=mono title=\"{id}\">{}</td><td><a href=\"/pkg?name={}\">{}</a></td><td class=hide-s>{}</td><td class=\"st st-{ds}\">{ds}</td><td class=r>{}</td><td class=hide-s title=\"{}\">{}</td><td>{}</td></tr>",
            short(&id),
            esc(&url_enc(&name)),
            esc(&name),
            esc(repo),
            esc(&detail),
            utc(enq.time.0),
            ago(enq.time.0, now),
            if has_log {
                format!("<a href=\"/logs/{id}\">log</a>")
            } else {
                String::new()
            }
        );
    }
    out.push_str("</tbody></table></div>");
    if shown < matching {
        let mut l = link(want_state);
        l.push_str(if l.contains('?') && !l.ends_with('?') {
            "&limit=all"
        } else {
            "limit=all"
        });
        let _ = write!(
            out,
            "<p class=mut>{shown} of {matching} entries shown. <a href=\"{}\">Show all</a></p>",
            esc(&l)
        );
    } else if matching == 0 {
        out.push_str("<p class=mut>No entries.</p>");
    }

    // Nodes.
    out.push_str("<h2>Nodes</h2><div class=tbl><table id=nodes><tr><th>node</th><th>arch</th><th class=hide-s>cores</th><th class=hide-s>memory</th><th class=hide-s>disk free</th><th class=hide-s>tags</th><th>load / slots</th><th>last seen</th></tr>");
    let peers: Vec<Value> = match status.get("peers").and_then(Value::as_array) {
        Some(p) if !p.is_empty() => p.clone(),
        _ => vec![self_node(core, &status, now)],
    };
    for p in &peers {
        let num = |k: &str| p[k].as_u64();
        let arch = match (p["arch"].as_str(), num("microarch")) {
            (Some(a), Some(m)) if m > 0 => format!("{a} v{m}"),
            (Some(a), _) => a.to_string(),
            _ => "?".into(),
        };
        let tags: Vec<&str> = p["tags"]
            .as_array()
            .map(|t| t.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let node = p["node"].as_str().or(p["peer_id"].as_str()).unwrap_or("?");
        let _ = write!(
            out,
            "<tr><td class=mono title=\"{}\">{}{}</td><td>{}</td><td class=hide-s>{}</td><td class=hide-s>{}</td><td class=hide-s>{}</td><td class=hide-s>{}</td><td>{} / {}</td><td>{}</td></tr>",
            esc(p["peer_id"].as_str().unwrap_or(node)),
            esc(short(node)),
            if p["self"].as_bool() == Some(true) {
                " (this node)"
            } else {
                ""
            },
            esc(&arch),
            num("cores").map_or("?".into(), |c| c.to_string()),
            num("mem_bytes").map_or("?".into(), human),
            num("disk_free_bytes").map_or("?".into(), human),
            esc(&tags.join(", ")),
            num("load").map_or("?".into(), |c| c.to_string()),
            num("slots").map_or("?".into(), |c| c.to_string()),
            num("last_seen").map_or("?".into(), |t| ago(t, now)),
        );
    }
    out.push_str("</table></div>");

    // Repository generations.
    out.push_str("<h2>Repositories</h2>");
    render_generations(&mut out, state, now, 10);

    out.push_str("</main><script>");
    out.push_str(INDEX_JS);
    out.push_str("</script></body></html>");
    out
}

/// This node as a row of the nodes table (the mesh layer adds `peers` to the status).
fn self_node(core: &Core, status: &Value, now: Timestamp) -> Value {
    let caps = core.capabilities();
    let h = core.health.snapshot();
    json!({
        "self": true,
        "node": status["node"]["public_key"],
        "peer_id": status["node"]["node_id"],
        "arch": caps.as_ref().map(|c| c.arch.to_string()),
        "microarch": caps.as_ref().map(|c| c.microarch),
        "cores": caps.as_ref().map(|c| c.cores),
        "mem_bytes": h.memory_available_bytes.or(caps.as_ref().map(|c| c.memory_bytes)),
        "disk_free_bytes": h.disk_free_bytes.or(caps.as_ref().map(|c| c.disk_free_bytes)),
        "tags": caps.as_ref().map(|c| c.tags.iter().map(|t| t.to_string()).collect::<Vec<_>>()),
        "profile": caps.as_ref().map(|c| c.profile.to_string()),
        "load": core.live_logs.active().iter().filter(|a| a.builder == core.public).count(),
        "slots": caps.as_ref().map(|c| c.slots),
        "last_seen": now.0,
    })
}

fn render_generations(out: &mut String, state: &QueueState, now: Timestamp, per_repo: usize) {
    let mut any = false;
    for (repo, arch) in state.published_repos() {
        any = true;
        let _ = write!(
            out,
            "<h3 class=mono>{}/{}</h3><div class=tbl><table class=gens><tr><th>generation</th><th>published</th><th>publisher</th><th>packages</th></tr>",
            esc(repo.as_str()),
            esc(arch.as_str())
        );
        if let Some(gens) = state.generations(repo, arch) {
            for (g, by_id) in gens.iter().rev().take(per_repo) {
                for (id, m) in by_id {
                    let _ = write!(
                        out,
                        "<tr><td title=\"{id}\">{g}</td><td title=\"{}\">{}</td><td class=mono>{}</td><td>{}</td></tr>",
                        utc(m.time.0),
                        ago(m.time.0, now),
                        short(&m.publisher.to_string()),
                        m.packages.len()
                    );
                }
            }
        }
        out.push_str("</table></div>");
    }
    if !any {
        out.push_str("<p class=mut>Nothing published yet.</p>");
    }
}

const INDEX_JS: &str = r#"
(function(){
  var f=document.getElementById('filter'),rows=document.querySelectorAll('#queue tbody tr');
  function apply(){var n=f.value.trim().toLowerCase();
    for(var i=0;i<rows.length;i++){var r=rows[i];r.style.display=(!n||r.textContent.toLowerCase().indexOf(n)>=0)?'':'none';}}
  f.addEventListener('input',apply);
  var auto=document.getElementById('auto');
  try{auto.checked=localStorage.getItem('pacmesh-auto')!=='off';}catch(e){}
  auto.addEventListener('change',function(){try{localStorage.setItem('pacmesh-auto',auto.checked?'on':'off');}catch(e){}});
  setInterval(function(){
    if(!auto.checked||document.activeElement===f||document.hidden)return;
    var u=new URL(location.href);if(f.value.trim())u.searchParams.set('q',f.value.trim());location.replace(u);
  },10000);
})();
"#;

// ---------------------------------------------------------------------------------------------
// Package history.

#[derive(Debug, Deserialize)]
pub struct PkgQuery {
    pub name: String,
}

async fn package(State(core): State<Arc<Core>>, Query(q): Query<PkgQuery>) -> Response {
    let name = q.name.clone();
    match blocking(move || render_package(&core, &name, Timestamp::now())).await {
        Ok(Some(html)) => Html(html).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, Html(format!(
            "<!doctype html><meta charset=utf-8><title>not found</title><p>No queue entry is named <code>{}</code>. <a href=\"/\">Back</a></p>",
            esc(&q.name)
        ))).into_response(),
        Err(r) => r,
    }
}

/// The history of the entries named `name` (their source label), or `None` if there are none.
pub fn render_package(core: &Core, name: &str, now: Timestamp) -> Option<String> {
    let ingest = core.ingest();
    let state = ingest.state();
    let mut entries: Vec<&EntryRecord> = state
        .entries()
        .filter(|e| {
            e.enqueued
                .as_ref()
                .is_some_and(|q| crate::views::source_label(&q.entry.source) == name)
        })
        .collect();
    if entries.is_empty() {
        return None;
    }
    entries.sort_by_key(|e| std::cmp::Reverse(e.enqueued.as_ref().map_or(0, |q| q.time.0)));
    let mut out = String::with_capacity(16 << 10);
    page_head(&mut out, &format!("{name} · pacmesh"));
    out.push_str("<header><h1>");
    esc_into(&mut out, name);
    out.push_str("</h1><div class=mut><a href=\"/\">← status</a></div></header><main>");

    // Blobs built for this package, to find the generations that published them.
    let mut built: BTreeMap<Hash, ()> = BTreeMap::new();
    out.push_str("<h2>Entries and builds</h2>");
    for e in &entries {
        let Some(q) = &e.enqueued else { continue };
        let st = state.status(e, now);
        let ds = display_state(core, e, &st);
        let id = e.id.to_string();
        let _ = write!(
            out,
            "<h3 class=mono title=\"{id}\">{} <span class=\"st st-{ds}\">{ds}</span></h3><p class=mut>repo {} · enqueued {} ({}) by <span class=mono>{}</span> · <a href=\"/logs/{id}\">log</a> · <a href=\"/api/v1/entries/{id}\">JSON</a></p>",
            short(&id),
            esc(q.entry.repo.as_str()),
            utc(q.time.0),
            ago(q.time.0, now),
            short(&q.by.to_string()),
        );
        out.push_str("<div class=tbl><table><tr><th>when</th><th>builder</th><th>attempt</th><th>outcome</th><th>files / reason</th><th>log</th></tr>");
        let mut reports: Vec<_> = e.reports.values().collect();
        reports.sort_by_key(|r| r.time);
        for c in e.claims.values() {
            if !e
                .reports
                .keys()
                .any(|(b, a, _)| *b == c.builder && *a >= c.attempt)
                && c.lease_until > now
            {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td class=mono>{}</td><td>{}</td><td class=\"st st-claimed\">{}</td><td>lease {}</td><td><a href=\"/logs/{id}\">live</a></td></tr>",
                    ago(c.time.0, now),
                    short(&c.builder.to_string()),
                    c.attempt,
                    if core.live_logs.is_active(&e.id) {
                        "building"
                    } else {
                        "claimed"
                    },
                    ago(c.lease_until.0, now)
                );
            }
        }
        for r in reports {
            let (outcome, what, log) = match &r.outcome {
                ReportOutcome::Built { artifacts, log, .. } => {
                    for a in artifacts {
                        built.insert(a.blake3, ());
                    }
                    (
                        "built",
                        artifacts
                            .iter()
                            .map(|a| a.file_name.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        Some(*log),
                    )
                }
                ReportOutcome::Failed { reason, log } => ("failed", reason.clone(), *log),
            };
            let _ = write!(
                out,
                "<tr><td title=\"{}\">{}</td><td class=mono>{}</td><td>{}</td><td class=\"st st-{outcome}\">{outcome}</td><td class=r>{}</td><td>{}</td></tr>",
                utc(r.time.0),
                ago(r.time.0, now),
                short(&r.builder.to_string()),
                r.attempt,
                esc(&what),
                log.map_or(String::new(), |h| format!(
                    "<a href=\"/api/v1/blobs/{h}\">{}</a>",
                    &h.to_hex()[..8]
                ))
            );
        }
        out.push_str("</table></div>");
    }

    out.push_str("<h2>Published in</h2><div class=tbl><table><tr><th>repository</th><th>generation</th><th>published</th><th>package</th><th>version</th></tr>");
    let mut n = 0;
    for (repo, arch) in state.published_repos() {
        if let Some(gens) = state.generations(repo, arch) {
            for (g, by_id) in gens.iter().rev() {
                for m in by_id.values() {
                    for p in m.packages.iter().filter(|p| built.contains_key(&p.blake3)) {
                        n += 1;
                        let _ = write!(
                            out,
                            "<tr><td class=mono>{}/{}</td><td>{g}</td><td>{}</td><td>{}</td><td class=mono>{}</td></tr>",
                            esc(repo.as_str()),
                            esc(arch.as_str()),
                            ago(m.time.0, now),
                            esc(p.pkgname.as_str()),
                            esc(&p.version)
                        );
                    }
                }
            }
        }
    }
    out.push_str("</table></div>");
    if n == 0 {
        out.push_str("<p class=mut>Not published yet.</p>");
    }
    out.push_str("</main></body></html>");
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Logs.

#[derive(Debug, Default, Deserialize)]
pub struct LogQuery {
    pub format: Option<String>,
}

/// The log blob of an entry's latest report that has one.
fn latest_log(e: &EntryRecord) -> Option<(Hash, &'static str)> {
    e.reports
        .values()
        .filter_map(|r| match &r.outcome {
            ReportOutcome::Built { log, .. } => Some((r.time, *log, "built")),
            ReportOutcome::Failed { log: Some(l), .. } => Some((r.time, *l, "failed")),
            ReportOutcome::Failed { log: None, .. } => None,
        })
        .max_by_key(|(t, _, _)| *t)
        .map(|(_, h, o)| (h, o))
}

/// Where an entry's log stands.
enum LogState {
    NoEntry,
    /// Streaming here (built here, or relayed).
    Live,
    /// Claimed by another node (whose log is not streaming here).
    Remote {
        builder: pacmesh_protocol::PublicKey,
        attempt: u32,
    },
    /// Finished with a stored log.
    Finished {
        log: Hash,
        state: &'static str,
    },
    /// Nothing to show yet, with why.
    Nothing(String),
}

fn log_state(core: &Core, id: &Hash) -> LogState {
    if core.live_logs.is_active(id) {
        return LogState::Live;
    }
    let ingest = core.ingest();
    let state = ingest.state();
    let Some(e) = state.entry(id) else {
        return LogState::NoEntry;
    };
    let now = Timestamp::now();
    match state.status(e, now) {
        EntryStatus::Claimed { by, attempt, .. } if by != core.public => LogState::Remote {
            builder: by,
            attempt,
        },
        EntryStatus::Claimed { .. } => LogState::Nothing("claimed by this node; starting".into()),
        st => match latest_log(e) {
            Some((log, s)) => LogState::Finished { log, state: s },
            None => LogState::Nothing(format!("{}: no log", st.label())),
        },
    }
}

async fn logs(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
    headers: HeaderMap,
) -> Response {
    let Ok(id) = id.parse::<Hash>() else {
        return (
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not an entry id (64 hex digits)\n"),
        )
            .into_response();
    };
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = match q.format.as_deref() {
        Some(f @ ("sse" | "text" | "html")) => f,
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("format {other:?}: use sse, text or html\n"),
            )
                .into_response();
        }
        None if accept.contains("text/event-stream") => "sse",
        None if accept.contains("text/html") => "html",
        None => "text",
    };
    match format {
        "html" => log_page(core, id).await,
        "sse" => log_sse(core, id),
        _ => log_text(core, id, &headers).await,
    }
}

async fn log_page(core: Arc<Core>, id: Hash) -> Response {
    let info = blocking(move || {
        let ingest = core.ingest();
        let state = ingest.state();
        state.entry(&id).map(|e| {
            let name = e
                .enqueued
                .as_ref()
                .map(|q| crate::views::source_label(&q.entry.source))
                .unwrap_or_default();
            let st = state.status(e, Timestamp::now());
            (name, display_state(&core, e, &st))
        })
    })
    .await;
    let (name, st) = match info {
        Ok(Some(x)) => x,
        Ok(None) => return (
            StatusCode::NOT_FOUND,
            Html(format!(
                "<!doctype html><meta charset=utf-8><p>No entry {id}. <a href=\"/\">Back</a></p>"
            )),
        )
            .into_response(),
        Err(r) => return r,
    };
    let mut out = String::with_capacity(8 << 10);
    page_head(&mut out, &format!("log · {name}"));
    let _ = write!(
        out,
        "<header><h1>Log of <a href=\"/pkg?name={}\">{}</a></h1><div class=mut><a href=\"/\">← status</a> · entry <span class=mono>{}</span> · <span id=state class=\"st st-{st}\">{st}</span> · <a href=\"/logs/{id}?format=text\">text</a></div></header><main><p id=note class=mut></p><pre id=log></pre></main><script>",
        esc(&url_enc(&name)),
        esc(&name),
        short(&id.to_string()),
    );
    out.push_str(LOG_JS);
    out.push_str("</script></body></html>");
    Html(out).into_response()
}

const LOG_JS: &str = r#"
(function(){
  var pre=document.getElementById('log'),note=document.getElementById('note'),st=document.getElementById('state');
  var base=location.pathname, pending=[], timer=null;
  function stick(){return window.innerHeight+window.scrollY>=document.body.scrollHeight-40;}
  function flush(){timer=null;var s=stick();pre.appendChild(document.createTextNode(pending.join('\n')+'\n'));pending=[];if(s)window.scrollTo(0,document.body.scrollHeight);}
  function add(l){pending.push(l);if(!timer)timer=setTimeout(flush,50);}
  function state(s){st.textContent=s;st.className='st st-'+s;}
  var es=new EventSource(base+'?format=sse');
  es.addEventListener('meta',function(e){var m=JSON.parse(e.data);pre.textContent='';state('building');
    note.textContent='live · attempt '+m.attempt+' on '+m.builder.slice(0,12)+(m.skipped?' · '+m.skipped+' earlier lines not shown':'');});
  es.onmessage=function(e){add(e.data);};
  es.addEventListener('lost',function(e){add('… '+e.data+' lines lost (this page was too slow)');});
  es.addEventListener('waiting',function(e){note.textContent=e.data;});
  es.addEventListener('end',function(e){es.close();if(timer){clearTimeout(timer);flush();}state(e.data.split(':')[0]);note.textContent='build ended: '+e.data;});
  es.addEventListener('finished',function(e){es.close();var m=JSON.parse(e.data);state(m.state);note.textContent='finished ('+m.state+')';
    fetch(m.log_url).then(function(r){return r.text();}).then(function(t){pre.textContent=t;});});
})();
"#;

/// Items sent to one follower.
enum Out {
    Event(&'static str, String),
    Line(Arc<str>),
}

/// Follows `id` for one client: sends what [`Out`] says to `tx` until the build ends or the
/// client goes away.
async fn follow(core: Arc<Core>, id: Hash, tx: mpsc::Sender<Out>) {
    let mut changed = core.subscribe();
    let mut asked_relay = false;
    let mut said_wait = String::new();
    let idle_until = tokio::time::Instant::now() + FOLLOW_IDLE;
    loop {
        let c = core.clone();
        let st = match tokio::task::spawn_blocking(move || log_state(&c, &id)).await {
            Ok(s) => s,
            Err(_) => return,
        };
        match st {
            LogState::NoEntry => {
                let _ = tx
                    .send(Out::Event("waiting", format!("no entry {id}")))
                    .await;
                return;
            }
            LogState::Finished { state, .. } => {
                let _ = tx
                    .send(Out::Event(
                        "finished",
                        json!({ "state": state, "log_url": format!("/logs/{id}?format=text") })
                            .to_string(),
                    ))
                    .await;
                return;
            }
            LogState::Live => {
                let Some(mut f) = core.live_logs.follow(&id) else {
                    continue; // ended in between: look again
                };
                let meta = json!({ "builder": f.builder.to_string(), "attempt": f.attempt, "skipped": f.skipped });
                if tx.send(Out::Event("meta", meta.to_string())).await.is_err() {
                    return;
                }
                for l in f.backlog.drain(..) {
                    if tx.send(Out::Line(l)).await.is_err() {
                        return;
                    }
                }
                loop {
                    match f.rx.recv().await {
                        Ok(LiveEvent::Line(l)) => {
                            if tx.send(Out::Line(l)).await.is_err() {
                                return;
                            }
                        }
                        Ok(LiveEvent::End(how)) => {
                            let _ = tx.send(Out::Event("end", how.to_string())).await;
                            return;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            if tx.send(Out::Event("lost", n.to_string())).await.is_err() {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            let _ = tx.send(Out::Event("end", "stopped".into())).await;
                            return;
                        }
                    }
                }
            }
            LogState::Remote { builder, attempt } => {
                let relayed = asked_relay || core.live_logs.want_remote(id, builder, attempt);
                asked_relay = relayed;
                let msg = if relayed {
                    format!(
                        "building on node {}; waiting for its log",
                        builder.fmt_short()
                    )
                } else {
                    format!(
                        "building on node {}; its live log is on that node (this node does not relay logs yet)",
                        builder.fmt_short()
                    )
                };
                if msg != said_wait {
                    if tx.send(Out::Event("waiting", msg.clone())).await.is_err() {
                        return;
                    }
                    said_wait = msg;
                }
            }
            LogState::Nothing(why) => {
                if why != said_wait {
                    if tx.send(Out::Event("waiting", why.clone())).await.is_err() {
                        return;
                    }
                    said_wait = why;
                }
            }
        }
        // Look again when something changes (a claim, a report) or soon (a stream starting
        // does not change the queue).
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = tx.closed() => return,
        }
        if tokio::time::Instant::now() > idle_until {
            return;
        }
    }
}

fn log_sse(core: Arc<Core>, id: Hash) -> Response {
    let (tx, rx) = mpsc::channel::<Out>(256);
    tokio::spawn(follow(core, id, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let o = rx.recv().await?;
        let ev = match o {
            Out::Line(l) => SseEvent::default().data(&*l),
            Out::Event(name, data) => SseEvent::default().event(name).data(data),
        };
        Some((Ok::<_, Infallible>(ev), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn log_text(core: Arc<Core>, id: Hash, headers: &HeaderMap) -> Response {
    let c = core.clone();
    let st = match blocking(move || log_state(&c, &id)).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match st {
        LogState::NoEntry => (StatusCode::NOT_FOUND, format!("no entry {id}\n")).into_response(),
        LogState::Nothing(why) => {
            (StatusCode::NOT_FOUND, format!("no log yet: {why}\n")).into_response()
        }
        LogState::Finished { log, .. } => {
            let zstd_ok = headers
                .get(header::ACCEPT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|p| p.trim().starts_with("zstd")));
            let c = core.clone();
            let body = blocking(move || -> Result<(Vec<u8>, bool), String> {
                let bytes = c.blobs.read(&log).map_err(|e| e.to_string())?;
                if zstd_ok {
                    let z = zstd::bulk::compress(&bytes, 3).map_err(|e| e.to_string())?;
                    Ok((z, true))
                } else {
                    Ok((bytes, false))
                }
            })
            .await;
            match body {
                Ok(Ok((bytes, compressed))) => {
                    let mut r = Response::builder()
                        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                        .header(header::VARY, "accept-encoding")
                        .header(header::CACHE_CONTROL, "public, max-age=31536000, immutable")
                        .header("x-pacmesh-log-blob", log.to_string());
                    if compressed {
                        r = r.header(header::CONTENT_ENCODING, "zstd");
                    }
                    r.body(Body::from(bytes)).unwrap_or_else(|e| {
                        (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
                    })
                }
                Ok(Err(e)) => (
                    StatusCode::NOT_FOUND,
                    format!("the log blob {log} is not on this node: {e}\n"),
                )
                    .into_response(),
                Err(r) => r,
            }
        }
        LogState::Live | LogState::Remote { .. } => {
            let (tx, rx) = mpsc::channel::<Out>(256);
            tokio::spawn(follow(core, id, tx));
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                let o = rx.recv().await?;
                let text = match o {
                    Out::Line(l) => format!("{l}\n"),
                    Out::Event("end", how) => format!("==> pacmesh: build ended: {how}\n"),
                    Out::Event("lost", n) => {
                        format!("==> pacmesh: {n} lines lost (reader too slow)\n")
                    }
                    Out::Event("finished", data) => format!("==> pacmesh: finished: {data}\n"),
                    Out::Event("waiting", why) => format!("==> pacmesh: {why}\n"),
                    Out::Event(_, _) => String::new(),
                };
                Some((Ok::<_, Infallible>(axum::body::Bytes::from(text)), rx))
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .header(header::CACHE_CONTROL, "no-cache")
                .header("x-accel-buffering", "no")
                .body(Body::from_stream(stream))
                .unwrap_or_else(|e| {
                    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(url_enc("aur/foo bar"), "aur%2Ffoo%20bar");
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(1_767_225_600_000), "2026-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400_000 + 3_723_000), "2000-02-29 01:02:03Z");
        let now = Timestamp::from_millis(10_000_000);
        assert_eq!(ago(10_000_000 - 5_000, now), "5 s ago");
        assert_eq!(ago(10_000_000 - 7_200_000, now), "2 h ago");
        assert_eq!(ago(10_000_000 + 20_000, now), "in 20 s");
    }
}
