"""``hyrl bundle``: everything a hyrl install needs, for a machine with no network, in parts of bounded size.

Many GPU clusters have no internet on their nodes and accept files in limited sizes. The bundle is the wheel
closure of a hyrl install profile for the target's Python and platform, minus what the target already has
(``--exclude-installed``, a ``pip freeze`` of the target: those versions also constrain the resolution), as one tar
stream cut into ``part-NNN`` files of at most ``--max-part-mib``, with ``manifest.json`` (sha256 of every part and of
the whole) and ``install.sh``, which checks, reassembles and installs into a folder without touching the network.

Overrides (``--override "llguidance==1.6.1"``, as uv's override-dependencies): the named requirement replaces every
requirement on that package while resolving, the dependents' and the top-level ones alike; a package nobody asks for
is not added. ``--drop NAME`` leaves a package out whoever requires it (optional kernels the target will not
use). pip has no such options, so with overrides the closure is resolved here as a fixed point: pip (with
``--no-deps``) picks the newest version that meets every requirement gathered so far, the picked packages' own
requirements (markers evaluated for the target: Python version, Linux, the requested extras) are gathered again with
the overrides applied, until the picks stop changing. No backtracking: a conflict is reported, never worked around.
Packages the target has (``--exclude-installed``) are never expanded: the target's version must meet every
requirement on it, else the conflict is named.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_SH = r"""#!/usr/bin/env bash
# Offline install of a hyrl bundle: check every part, reassemble, install the wheels into TARGET.
#   bash install.sh TARGET [PYTHON]      then: export PYTHONPATH=TARGET:$PYTHONPATH
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target="${1:?usage: install.sh TARGET [PYTHON]}"
python="${2:-python3}"
cd "$here"
sha256sum --check --quiet SHA256SUMS || { echo "install.sh: a part is missing or corrupt (see above)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat part-* | tar -x -C "$work"
(cd "$work" && sha256sum --check --quiet wheels.sha256)
"$python" -m pip install --no-index --no-deps --no-compile --disable-pip-version-check --target "$target" \
  "$work"/wheels/*.whl
echo "install.sh: installed $(ls "$work"/wheels | wc -l) wheels into $target"
"""


@dataclass
class BundleSpec:
    requirements: list[str]  # pip requirement strings (a local wheel path works too)
    python: str = "3.12"
    platforms: list[str] = field(default_factory=lambda: ["manylinux_2_28_x86_64"])
    exclude_installed: Path | None = None  # pip freeze of the target
    max_part_mib: float = 60.0
    find_links: list[str] = field(default_factory=list)
    no_index: bool = False
    overrides: list[str] = field(default_factory=list)  # requirements that replace every requirement on their name
    drop: list[str] = field(default_factory=list)  # package names left out, whoever requires them


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_freeze(path: Path) -> dict[str, str]:
    """``name==version`` lines of a ``pip freeze`` (other lines, e.g. ``@ file://`` installs, are skipped)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and name and not name.startswith("#"):
            out[_norm(name.split("[")[0])] = version.split(";")[0].strip()
    return out


def expand_platforms(platforms: list[str]) -> list[str]:
    """``manylinux_2_28_x86_64`` also takes wheels built for older glibc (2_27 ... 2_5, and the legacy aliases),
    as pip would on the target; pip's ``--platform`` matches tags exactly, so list them all."""
    out: list[str] = []
    for p in platforms:
        m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", p)
        tags = [p]
        if m:
            glibc, arch = int(m.group(1)), m.group(2)
            tags = [f"manylinux_2_{v}_{arch}" for v in range(glibc, 4, -1)]
            tags += [f"{alias}_{arch}" for alias, v in (("manylinux2014", 17), ("manylinux2010", 12),
                                                        ("manylinux1", 5)) if v <= glibc]
        out += [t for t in tags if t not in out]
    return out


def _pip(spec: BundleSpec, *args: str) -> list[str]:
    cmd = [sys.executable, "-m", "pip", *args, "--only-binary=:all:", "--python-version", spec.python,
           "--implementation", "cp", "--disable-pip-version-check", "--quiet"]
    for p in expand_platforms(spec.platforms):
        cmd += ["--platform", p]
    for f in spec.find_links:
        cmd += ["--find-links", f]
    return cmd + (["--no-index"] if spec.no_index else [])


def resolve(spec: BundleSpec, work: Path) -> list[dict]:
    """The closure as pip would install it on the target: [{name, version, excluded, url}]."""
    if spec.overrides or spec.drop:
        return resolve_with_overrides(spec, work)
    installed = read_freeze(spec.exclude_installed) if spec.exclude_installed else {}
    constraints = work / "constraints.txt"
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in installed.items()))
    report = work / "report.json"
    cmd = _pip(spec, "install", "--dry-run", "--ignore-installed", "--report", str(report), "--target",
               str(work / "never-written"), "-c", str(constraints), *spec.requirements)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"resolving {' '.join(spec.requirements)} for Python {spec.python} on "
                           f"{', '.join(spec.platforms)} failed:\n{proc.stderr[-3000:]}")
    rows = []
    for item in json.loads(report.read_text())["install"]:
        name, version = _norm(item["metadata"]["name"]), item["metadata"]["version"]
        url = item["download_info"]["url"]
        rows.append({"name": name, "version": version, "excluded": name in installed, "url": url})
    return rows


def target_environment(spec: BundleSpec) -> dict[str, str]:
    """PEP 508 marker values of the target (CPython on Linux, ``spec.python``, the first platform's machine)."""
    m = re.fullmatch(r"(?:many|musl)?linux(?:_\d+_\d+|\d+)?_(\w+)", spec.platforms[0] if spec.platforms else "")
    machine = m.group(1) if m else "x86_64"  # manylinux_2_28_x86_64, manylinux2014_x86_64, linux_x86_64 -> x86_64
    full = spec.python if spec.python.count(".") >= 2 else f"{spec.python}.0"
    return {"implementation_name": "cpython", "implementation_version": full, "os_name": "posix",
            "platform_machine": machine, "platform_python_implementation": "CPython", "platform_release": "",
            "platform_system": "Linux", "platform_version": "", "python_full_version": full,
            "python_version": ".".join(full.split(".")[:2]), "sys_platform": "linux"}


def _applies(req, env: dict[str, str], extras: set[str]) -> bool:
    """Whether a requirement's marker holds on the target for a package installed with ``extras``."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env, "extra": e}) for e in sorted(extras | {""}))


def _merge(reqs: list[tuple]) -> dict[str, dict]:
    """(requirement, who asks) pairs by normalized name: intersected specifiers, united extras, the direct URL if any
    names one, and who asked for what (for messages)."""
    from packaging.specifiers import SpecifierSet

    merged: dict[str, dict] = {}
    for r, who in reqs:
        m = merged.setdefault(_norm(r.name), {"name": r.name, "spec": SpecifierSet(), "extras": set(), "url": None,
                                              "from": []})
        m["spec"] &= r.specifier
        m["extras"] |= set(r.extras)
        m["url"] = m["url"] or r.url
        m["from"].append(f"{who}: {r.name}{r.specifier}")
    return merged


def _pip_line(m: dict) -> str:
    extras = f"[{','.join(sorted(m['extras']))}]" if m["extras"] else ""
    return f"{m['name']}{extras} @ {m['url']}" if m["url"] else f"{m['name']}{extras}{m['spec']}"


def resolve_with_overrides(spec: BundleSpec, work: Path) -> list[dict]:
    """The closure with ``spec.overrides`` replacing every requirement on their names (fixed point; module doc)."""
    from packaging.requirements import Requirement

    installed = read_freeze(spec.exclude_installed) if spec.exclude_installed else {}
    overrides = {_norm(Requirement(o).name): Requirement(o) for o in spec.overrides}
    drop = {_norm(n) for n in spec.drop}
    env = target_environment(spec)

    def gather(reqs: list, extras: set[str], who: str) -> list[tuple]:
        out = [(overrides.get(_norm(r.name), r), who) for r in reqs
               if _applies(r, env, extras) and _norm(r.name) not in drop]
        return [(r, w) for r, w in out if r not in overrides.values() or _applies(r, env, set())]  # its own marker

    top = gather([Requirement(r) for r in spec.requirements], set(), "requested")
    picked: dict[str, dict] = {}  # name -> pip report item
    for _ in range(50):
        reqs = list(top)
        merged = _merge(reqs)
        for name, item in picked.items():
            extras = merged[name]["extras"] if name in merged else set()
            deps = [Requirement(d) for d in item["metadata"].get("requires_dist") or []]
            reqs += gather(deps, extras, f"{name} {item['metadata']['version']}")
        merged = _merge(reqs)
        wanted = {n: m for n, m in merged.items() if n not in installed}
        clashes = [f"  the target has {n}=={installed[n]}, but {'; '.join(m['from'])}" for n, m in merged.items()
                   if n in installed and not m["spec"].contains(installed[n], prereleases=True)]
        if clashes:
            raise RuntimeError("\n".join(["requirements the target's packages do not meet:", *clashes,
                                          "(fix: an --override per package, or drop its line from the "
                                          "--exclude-installed file to bundle a version that meets it)"]))
        report = work / "report.json"
        cmd = _pip(spec, "install", "--dry-run", "--ignore-installed", "--no-deps", "--report", str(report),
                   "--target", str(work / "never-written"), *[_pip_line(m) for m in wanted.values()])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"resolving with overrides {', '.join(spec.overrides + spec.drop)} for Python "
                               f"{spec.python} on "
                               f"{', '.join(spec.platforms)} failed:\n{proc.stderr[-3000:]}")
        new = {_norm(i["metadata"]["name"]): i for i in json.loads(report.read_text())["install"]}
        if {n: i["metadata"]["version"] for n, i in new.items()} == {
                n: i["metadata"]["version"] for n, i in picked.items()}:
            break
        picked = new
    else:
        raise RuntimeError("resolving with overrides did not settle in 50 rounds (requirements keep changing)")
    rows = [{"name": n, "version": i["metadata"]["version"], "excluded": False, "url": i["download_info"]["url"]}
            for n, i in sorted(picked.items())]
    return rows + [{"name": n, "version": installed[n], "excluded": True, "url": ""}
                   for n in sorted(merged) if n in installed]


def _download(spec: BundleSpec, rows: list[dict], dest: Path) -> list[Path]:
    """The non-excluded wheels: local files copied, the rest through ``pip download --no-deps``."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    remote = []
    for r in rows:
        if r["excluded"]:
            continue
        if r["url"].startswith("file://"):
            shutil.copy(r["url"].removeprefix("file://"), dest)
        else:
            remote.append(f"{r['name']}=={r['version']}")
    if remote:
        cmd = _pip(spec, "download", "--no-deps", "-d", str(dest), *remote)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"downloading {len(remote)} wheels failed:\n{proc.stderr[-3000:]}")
    return sorted(dest.glob("*.whl"))


def _sha256(data_or_path: bytes | Path) -> str:
    h = hashlib.sha256()
    if isinstance(data_or_path, Path):
        with open(data_or_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    else:
        h.update(data_or_path)
    return h.hexdigest()


def build_bundle(spec: BundleSpec, out: Path) -> dict:
    """Resolve, download, pack and split into ``out``; returns the manifest (also written as manifest.json)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("part-*")):
        raise FileExistsError(f"{out} already holds parts of a bundle (fix: an empty --out folder)")
    limit = int(spec.max_part_mib * 2**20)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = resolve(spec, work)
        wheels = _download(spec, rows, work / "wheels")
        (work / "wheels.sha256").write_text("".join(f"{_sha256(w)}  wheels/{w.name}\n" for w in wheels))
        stream = work / "bundle.tar"
        with tarfile.open(stream, mode="w") as tar:  # wheels are zips already: no compression
            tar.add(work / "wheels.sha256", arcname="wheels.sha256")
            for w in wheels:
                tar.add(w, arcname=f"wheels/{w.name}")
        parts, whole = [], hashlib.sha256()
        with open(stream, "rb") as f:
            for i, chunk in enumerate(iter(lambda: f.read(limit), b"")):
                name = f"part-{i:03d}"
                (out / name).write_bytes(chunk)
                whole.update(chunk)
                parts.append({"name": name, "bytes": len(chunk), "sha256": _sha256(chunk)})
        total = stream.stat().st_size
    (out / "SHA256SUMS").write_text("".join(f"{p['sha256']}  {p['name']}\n" for p in parts))
    (out / "install.sh").write_text(INSTALL_SH)
    manifest = {
        "requirements": spec.requirements, "overrides": spec.overrides, "dropped": spec.drop, "python": spec.python,
        "platforms": spec.platforms,
        "max_part_bytes": limit, "total_bytes": total, "sha256": whole.hexdigest(), "parts": parts,
        "wheels": [w.name for w in wheels],
        "excluded": [f"{r['name']}=={r['version']}" for r in rows if r["excluded"]],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def hyrl_requirements(profile: str, work: Path) -> list[str]:
    """hyrl itself (a wheel built from this checkout) with a profile's extra, as pip requirements."""
    root = Path(__file__).resolve().parent
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(work), str(root)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the hyrl wheel failed:\n{proc.stderr[-2000:]}")
    wheel = next(Path(work).glob("hyrl-*.whl"))
    return [f"hyrl[{profile}] @ {wheel.as_uri()}"]
