#!/usr/bin/env python3
"""Writes seed inputs for the fuzz targets from the golden wire-format dumps in
../tests/golden (each dump's payload and envelope), so the fuzzers start from
valid messages instead of from nothing.  Run from anywhere:
    python3 protocol/fuzz/make_seeds.py
then e.g.  cd protocol && cargo +nightly fuzz run signed_event fuzz/corpus/signed_event fuzz/seeds/signed_event -- -dict=fuzz/cbor.dict
"""
import pathlib, re

here = pathlib.Path(__file__).resolve().parent
golden = here.parent / "tests" / "golden"
seeds = here / "seeds"

def sections(text):
    """{'payload': bytes, 'envelope': bytes, 'message': bytes} from a golden dump."""
    out, cur, buf = {}, None, []
    for line in text.splitlines():
        m = re.match(r"## (payload|envelope|message)\b", line)
        if m:
            if cur: out[cur] = bytes.fromhex("".join(buf))
            cur, buf = m.group(1), []
            continue
        if line.startswith("##") or cur is None:
            continue
        buf.append("".join(line.split("#", 1)[0].split()))
    if cur: out[cur] = bytes.fromhex("".join(buf))
    return out

targets = {
    "signed_event": lambda n: n.startswith("event_"),
    "mesh_policy": lambda n: n == "policy",
    "repo_manifest": lambda n: n in ("manifest", "event_publish"),
    "announcement": lambda n: n == "announcement",
    "sync": lambda n: n.startswith("sync_"),
    "hexdump": lambda n: True,
}
for target, want in targets.items():
    d = seeds / target
    d.mkdir(parents=True, exist_ok=True)
    for f in sorted(golden.glob("*.txt")):
        if not want(f.stem):
            continue
        for kind, data in sections(f.read_text()).items():
            (d / f"{f.stem}-{kind}").write_bytes(data)
req = seeds / "requirement"
req.mkdir(parents=True, exist_ok=True)
for i, s in enumerate(["arch=aarch64", "mem>=16G", "cores>=8", "disk>=50G", "tag=bigmem",
                       "profile=chroot", "microarch>=3", "x86-64-v2", "gpu=nvidia", "mem >= 512MiB"]):
    (req / f"req-{i}").write_text(s)
