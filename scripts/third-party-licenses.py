#!/usr/bin/env python3
"""THIRD-PARTY-LICENSES: every crate linked into the token-rotator binary (its normal dependencies on Linux, proc
macros and build-only crates left out, since none of their code ships), each with the licence its authors declare
(SPDX) and the licence and notice files it carries, every distinct text once.

The binary is static, so the Debian package and the container image ship this file beside it
(/usr/share/doc/token-rotator/THIRD-PARTY-LICENSES). It is committed and regenerated from Cargo.lock:

    python3 scripts/third-party-licenses.py          # rewrite THIRD-PARTY-LICENSES
    python3 scripts/third-party-licenses.py --check  # fail when it does not match Cargo.lock (CI)
"""
import hashlib
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "THIRD-PARTY-LICENSES")
# Platform-specific dependencies resolved for Linux on x86_64 (the image and the package); the set does not differ
# on other Linux targets.
PLATFORM = "x86_64-unknown-linux-gnu"
FILES = re.compile(r"^(licen[cs]e|copying|notice|unlicense)([-_.].*)?$", re.IGNORECASE)


def linked_packages(meta):
    by_id = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = next(p["id"] for p in meta["packages"] if p["name"] == "token-rotator")
    seen, todo = set(), [root]
    while todo:
        node = nodes[todo.pop()]
        for dep in node["deps"]:
            if not any(k["kind"] is None for k in dep["dep_kinds"]):
                continue  # dev- or build-only
            pkg = by_id[dep["pkg"]]
            if any("proc-macro" in t["kind"] for t in pkg["targets"]):
                continue  # runs in the compiler, never linked
            if dep["pkg"] not in seen:
                seen.add(dep["pkg"])
                todo.append(dep["pkg"])
    return sorted((by_id[i] for i in seen), key=lambda p: (p["name"], p["version"]))


def licence_files(pkg):
    d = os.path.dirname(pkg["manifest_path"])
    names = sorted(n for n in os.listdir(d) if FILES.match(n) and os.path.isfile(os.path.join(d, n)))
    if pkg.get("license_file"):
        lf = os.path.normpath(os.path.join(d, pkg["license_file"]))
        if os.path.isfile(lf) and os.path.basename(lf) not in names:
            names.append(os.path.relpath(lf, d))
    out = []
    for n in names:
        with open(os.path.join(d, n), encoding="utf-8", errors="replace") as f:
            out.append((n, f.read().strip() + "\n"))
    return out


def render():
    meta = json.loads(subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", PLATFORM], cwd=ROOT))
    pkgs = linked_packages(meta)
    texts = {}  # hash -> (text, [crate names])
    rows = []
    for p in pkgs:
        files = licence_files(p)
        refs = []
        for name, text in files:
            h = hashlib.sha256(text.encode()).hexdigest()[:12]
            texts.setdefault(h, (text, []))[1].append(f"{p['name']} {p['version']} ({name})")
            refs.append(h)
        rows.append((p["name"], p["version"], p.get("license") or "see its licence file", refs))
    out = ["Third-party software in token-rotator",
           "",
           "The token-rotator binary is statically linked with the crates below (Rust libraries from crates.io).",
           "Each line gives the crate, its version, the licence its authors declare (SPDX), and the texts it",
           "carries; each distinct text follows once, with the crates that carry it. Generated from Cargo.lock by",
           "scripts/third-party-licenses.py.",
           ""]
    width = max(len(f"{n} {v}") for n, v, _, _ in rows)
    for n, v, lic, refs in rows:
        out.append(f"{(n + ' ' + v).ljust(width)}  {lic}  [{', '.join(refs) or 'no licence file in the crate'}]")
    for h, (text, crates) in sorted(texts.items(), key=lambda kv: (kv[1][1][0], kv[0])):
        out += ["", "=" * 78, f"[{h}] carried by: " + "; ".join(crates), "=" * 78, "", text.rstrip("\n")]
    return "\n".join(out) + "\n"


def main():
    text = render()
    if "--check" in sys.argv[1:]:
        current = open(OUT, encoding="utf-8").read() if os.path.exists(OUT) else ""
        if current != text:
            sys.exit("THIRD-PARTY-LICENSES does not match Cargo.lock: run python3 scripts/third-party-licenses.py")
        print(f"THIRD-PARTY-LICENSES matches Cargo.lock ({text.count(chr(10))} lines)")
        return
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
