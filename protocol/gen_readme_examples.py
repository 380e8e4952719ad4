#!/usr/bin/env python3
"""Regenerates the 'Annotated examples' section of README.md from tests/golden/.

Run after re-blessing golden files:  python3 protocol/gen_readme_examples.py
(tests/wire.rs checks that every example in the README still matches.)
"""
import pathlib, re

here = pathlib.Path(__file__).resolve().parent
golden = here / "tests" / "golden"
readme = here / "README.md"

sections = [
    ("`Signed<Event>`: `claim` (payload and full envelope)", "event_claim", True),
    ("Event body `enqueue` (payload)", "event_enqueue", False),
    ("Event body `cancel` (payload)", "event_cancel", False),
    ("Event body `remove` (payload)", "event_remove", False),
    ("Event body `built` (payload)", "event_built", False),
    ("Event body `failed` (payload)", "event_failed", False),
    ("Event body `publish` (payload, carrying a `RepoManifest`)", "event_publish", False),
    ("Event body `approve` (payload)", "event_approve", False),
    ("Event body `enqueue` with `review` (payload)", "event_enqueue_review", False),
    ("Event body `enqueue` with `pkgrel_bump`, `cascade` and `after` (payload)", "event_enqueue_bump", False),
    ("MeshPolicy (payload)", "policy", False),
    ("`RepoManifest` (payload of a `Signed<RepoManifest>`)", "manifest", False),
    ("Announcement (payload)", "announcement", False),
    ("SyncRequest", "sync_request", True),
    ("SyncResponse", "sync_response", True),
]

out = []
for title, name, full in sections:
    text = (golden / f"{name}.txt").read_text()
    if not full and "## envelope" in text:
        text = text[: text.index("## envelope")]
    out.append(f"### {title}\n\n```text\n{text}```\n")

body = "\n".join(out)
src = readme.read_text()
start = src.index("## Annotated examples")
start = src.index("\n### ", start) + 1 if "\n### " in src[start:] else None
end = src.index("## Version history")
if start is None or start > end:
    start = src.index("\n", src.index("are BLAKE3 of short fixed strings", src.index("## Annotated examples"))) + 1
    body = "\n" + body
readme.write_text(src[:start] + body + "\n" + src[end:])
