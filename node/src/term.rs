//! Terminal output of the read commands: tables sized to their content and colours when stdout
//! is a terminal (never when `NO_COLOR` is set or `TERM=dumb`), plain text otherwise, `--json`
//! for scripts; a spinner (indicatif, on stderr) while `queue add --wait` waits.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;

use crate::client::Client;

/// Whether to colour stdout.
pub fn color() -> bool {
    std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

/// Whether a person watches (stderr is a terminal): progress bars and spinners.
pub fn interactive() -> bool {
    std::io::stderr().is_terminal()
}

fn paint(s: &str, code: &str, on: bool) -> String {
    if on && !code.is_empty() {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

/// The SGR code for an entry state.
fn state_code(state: &str) -> &'static str {
    match state {
        "published" | "built" => "32",
        "failed" => "31",
        "claimed" | "building" => "33",
        "cancelled" => "2",
        _ => "",
    }
}

fn short(s: &str) -> String {
    s.chars().take(12).collect()
}

/// Width in characters (what the terminal shows for the text we print).
fn width(s: &str) -> usize {
    s.chars().count()
}

fn clip(s: &str, max: usize) -> String {
    if width(s) <= max {
        s.to_string()
    } else {
        let mut o: String = s.chars().take(max.saturating_sub(1)).collect();
        o.push('…');
        o
    }
}

/// `queue ls`: one row per entry, columns as wide as their content (the detail is cut to the
/// terminal's width when `color`, i.e. on a terminal).
pub fn queue_table(q: &Value, color: bool) -> String {
    let mut rows: Vec<[String; 5]> = Vec::new();
    for e in q["entries"].as_array().into_iter().flatten() {
        let st = &e["status"];
        let state = st["state"].as_str().unwrap_or("?");
        let detail = match state {
            "claimed" => format!(
                "by {} attempt {}",
                short(st["by"].as_str().unwrap_or("")),
                st["attempt"]
            ),
            "failed" => st["reason"].as_str().unwrap_or("").to_string(),
            "published" => format!(
                "{}/{} generation {}",
                st["repo"].as_str().unwrap_or("?"),
                st["arch"].as_str().unwrap_or("?"),
                st["generation"]
            ),
            "built" => format!(
                "by {} builder(s)",
                st["builders"].as_array().map_or(0, Vec::len)
            ),
            "cancelled" => format!("by {}", short(st["by"].as_str().unwrap_or(""))),
            _ => String::new(),
        };
        rows.push([
            short(e["id"].as_str().unwrap_or("")),
            e["name"].as_str().unwrap_or("?").to_string(),
            e["repo"].as_str().unwrap_or("?").to_string(),
            state.to_string(),
            detail,
        ]);
    }
    let head = ["ENTRY", "NAME", "REPO", "STATE", "DETAIL"];
    let mut w = head.map(width);
    for r in &rows {
        for (i, c) in r.iter().enumerate().take(4) {
            w[i] = w[i].max(width(c));
        }
    }
    let cols = terminal_columns().filter(|_| color);
    let mut out = String::new();
    let line = |cells: [&str; 5], codes: [&str; 5], out: &mut String| {
        let mut used = 0;
        for i in 0..4 {
            let pad = " ".repeat(w[i] - width(cells[i]));
            out.push_str(&paint(cells[i], codes[i], color));
            out.push_str(&pad);
            out.push_str("  ");
            used += w[i] + 2;
        }
        let detail = match cols {
            Some(c) if c > used + 10 => clip(cells[4], c - used),
            _ => cells[4].to_string(),
        };
        out.push_str(&paint(&detail, codes[4], color));
        // No trailing blanks.
        while out.ends_with(' ') {
            out.pop();
        }
        out.push('\n');
    };
    line(head, ["1"; 5], &mut out);
    for r in &rows {
        let code = state_code(&r[3]);
        line(
            [&r[0], &r[1], &r[2], &r[3], &r[4]],
            ["2", "", "", code, if r[3] == "failed" { "31" } else { "" }],
            &mut out,
        );
    }
    if rows.is_empty() {
        out.push_str(&paint("(the queue is empty)\n", "2", color));
    }
    out
}

/// `$COLUMNS` or the terminal's width.
fn terminal_columns() -> Option<usize> {
    if let Some(c) = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()) {
        return Some(c);
    }
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills a winsize; fd 1 is ours.
    let rc = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0).then_some(ws.ws_col as usize)
}

/// `status`: the summary of [`crate::mesh_cli::render_status`], then whether the node takes
/// claims and what it builds now.
pub fn status_text(s: &Value, color: bool) -> String {
    let mut out = String::new();
    for l in crate::mesh_cli::render_status(s).lines() {
        // Labels are the first 12 columns ("public key  ...").
        let at = l.char_indices().nth(12).map_or(l.len(), |(i, _)| i);
        match Some(l.split_at(at)) {
            Some((k, v)) if color => {
                out.push_str(&paint(k.trim_end(), "1", true));
                out.push_str(&" ".repeat(k.len() - k.trim_end().len()));
                out.push_str(v);
            }
            _ => out.push_str(l),
        }
        out.push('\n');
    }
    let h = &s["health"];
    if h.is_object() {
        let refusals: Vec<&str> = h["refusals"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let (k, v) = if refusals.is_empty() {
            ("claims     ", paint("accepting new builds", "32", color))
        } else {
            (
                "claims     ",
                paint(&format!("REFUSED: {}", refusals.join("; ")), "31", color),
            )
        };
        out.push_str(&format!("{} {v}\n", paint(k, "1", color)));
    }
    for b in s["building"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{} {} by {} attempt {} ({} lines)\n",
            paint("building   ", "1", color),
            paint(&short(b["entry"].as_str().unwrap_or("?")), "33", color),
            short(b["builder"].as_str().unwrap_or("?")),
            b["attempt"],
            b["lines"]
        ));
    }
    out
}

/// The states after which an entry changes no more by itself.
const FINAL: [&str; 3] = ["published", "failed", "cancelled"];

/// Waits until entry `id` is published, failed or cancelled (or `timeout`), with a spinner
/// showing its state and the last log line when `interactive`. Returns the entry.
pub fn wait_entry(
    client: &Client,
    id: &str,
    timeout: Duration,
    interactive: bool,
) -> Result<Value> {
    let bar = interactive.then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    let start = Instant::now();
    let result = loop {
        let e = client.get_json(&format!("/api/v1/entries/{id}"))?;
        let state = e["status"]["state"].as_str().unwrap_or("?").to_string();
        if FINAL.contains(&state.as_str()) {
            break Ok(e);
        }
        if start.elapsed() > timeout {
            break Err(anyhow::anyhow!(
                "entry {} still {state} after {timeout:?}",
                short(id)
            ));
        }
        if let Some(b) = &bar {
            let mut msg = format!("{} {state}", short(id));
            if state == "claimed" {
                let st = client.get_json("/api/v1/status").unwrap_or(Value::Null);
                if let Some(r) = st["building"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["entry"] == id))
                {
                    msg = format!("{} building ({} log lines)", short(id), r["lines"]);
                }
            }
            b.set_message(msg);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let e = result?;
    if e["status"]["state"] == "failed" {
        bail!(
            "entry {} failed: {}",
            short(id),
            e["status"]["reason"].as_str().unwrap_or("?")
        );
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_fit_their_content_and_colour_only_when_asked() {
        let q = json!({ "entries": [
            { "id": "a".repeat(64), "name": "a-rather-long-package-name", "repo": "core",
              "status": { "state": "failed", "reason": "phase build: exit 1" } },
            { "id": "b".repeat(64), "name": "x", "repo": "core",
              "status": { "state": "published", "repo": "core", "arch": "x86_64", "generation": 3 } },
        ]});
        let plain = queue_table(&q, false);
        assert!(!plain.contains('\x1b'));
        let lines: Vec<&str> = plain.lines().collect();
        assert_eq!(lines.len(), 3);
        // Columns line up: STATE starts at the same place in every row.
        let col = lines[0].find("STATE").unwrap();
        assert_eq!(&lines[1][col..col + 6], "failed");
        assert_eq!(&lines[2][col..col + 9], "published");
        assert!(lines[2].ends_with("core/x86_64 generation 3"));
        let coloured = queue_table(&q, true);
        assert!(coloured.contains("\x1b[31mfailed\x1b[0m"));
        assert!(queue_table(&json!({"entries": []}), false).contains("empty"));
        let s = json!({ "node": {}, "mesh": {}, "events": {}, "queue": {},
            "health": { "refusals": ["disk: 1 GiB free"] },
            "building": [{ "entry": "c".repeat(64), "builder": "d".repeat(64), "attempt": 1, "lines": 5 }] });
        let t = status_text(&s, false);
        assert!(t.contains("claims      REFUSED: disk: 1 GiB free"), "{t}");
        assert!(
            t.contains("building    cccccccccccc by dddddddddddd attempt 1 (5 lines)"),
            "{t}"
        );
    }
}
