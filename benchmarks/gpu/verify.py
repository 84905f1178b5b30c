"""Check a joined payload stream: every file against its MANIFEST.sha256, and every
file that wheels.lock pins (wheels, sdist, GGUF, train wheels) against the lock. Wheels built
on the CPU machine (train/built/, the project wheel) are covered by the MANIFEST only.

Usage: python verify.py STREAM_DIR wheels.lock    (stdlib only; hashes in threads)
"""

import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for b in iter(lambda: fh.read(1 << 24), b""):
            h.update(b)
    return h.hexdigest()


def main():
    root, lock = sys.argv[1], sys.argv[2]
    manifest = {}
    with open(os.path.join(root, "MANIFEST.sha256")) as fh:
        for line in fh:
            h, rel = line.rstrip("\n").split("  ", 1)
            manifest[rel] = h
    pinned = {}
    with open(lock) as fh:
        for line in fh:
            line = line.strip()
            if line and not line.startswith("#"):
                kind, name, ver, f, h, size = line.split()
                if kind in ("wheel", "sdist", "gguf", "trainwheel"):
                    pinned[f] = h
    present = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            rel = os.path.relpath(os.path.join(d, f), root)
            if rel != "MANIFEST.sha256":
                present[rel] = os.path.join(d, f)
    errors = []
    if set(present) != set(manifest):
        errors.append(f"files differ from MANIFEST: extra {sorted(set(present) - set(manifest))[:5]}, "
                      f"missing {sorted(set(manifest) - set(present))[:5]}")
    with ThreadPoolExecutor(16) as ex:
        got = dict(zip(present, ex.map(sha256, present.values())))
    n_lock = 0
    for rel, h in got.items():
        if manifest.get(rel) != h:
            errors.append(f"{rel}: sha256 {h} != manifest {manifest.get(rel)}")
        base = os.path.basename(rel)
        if base in pinned:
            n_lock += 1
            if pinned[base] != h:
                errors.append(f"{rel}: sha256 {h} != wheels.lock {pinned[base]}")
        elif rel.startswith(("wheels/", "sdist/", "gguf/")):
            errors.append(f"{rel}: not pinned in wheels.lock")
    if errors:
        print("[verify] FAILED:\n  " + "\n  ".join(errors[:20]), flush=True)
        return 1
    print(f"[verify] {root}: {len(got)} files match MANIFEST, {n_lock} of them match wheels.lock", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
