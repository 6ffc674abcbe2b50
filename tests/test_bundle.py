"""hyrl bundle: resolve for another platform, leave out what the target has, split into bounded parts, and install
from the parts alone (here with local wheels and no index, so the test needs no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _wheel(tmp: Path, name: str, version: str, deps: list[str], payload: int = 0,
           extras: dict[str, list[str]] | None = None) -> None:
    """Build a pure-Python wheel ``name==version`` into tmp/wheels (``payload`` bytes of random data inside)."""
    src = tmp / "src" / f"{name}-{version}"
    pkg = src / name.replace("-", "_")
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"VERSION = {version!r}\n")
    if payload:
        (pkg / "blob.bin").write_bytes(os.urandom(payload))
    (src / "pyproject.toml").write_text(
        f'[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\ndependencies = {json.dumps(deps)}\n'
        f'[tool.setuptools.package-data]\n"*" = ["*.bin"]\n'
        + "".join(f"[project.optional-dependencies]\n{k} = {json.dumps(v)}\n" for k, v in (extras or {}).items()))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w",
                    str(tmp / "wheels"), str(src)], check=True)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from hyrl.cli import main

    tmp = tmp_path_factory.mktemp("bundle")
    _wheel(tmp, "hyrldemo-a", "0.1", ["hyrldemo-b>=1.0", "hyrldemo-c"], payload=300_000)
    _wheel(tmp, "hyrldemo-b", "1.0", [])
    _wheel(tmp, "hyrldemo-b", "2.0", [])
    _wheel(tmp, "hyrldemo-c", "0.3", [])
    (tmp / "freeze.txt").write_text("hyrldemo-b==1.0\nsomething-else==9.9\n")
    out = tmp / "out"
    rc = main(["bundle", str(out), "--requirement", "hyrldemo-a", "--no-index", "--find-links", str(tmp / "wheels"),
               "--exclude-installed", str(tmp / "freeze.txt"), "--max-part-mib", "0.1"])
    assert rc == 0
    return tmp, out


def test_bundle_leaves_out_installed_and_respects_the_part_size(bundle_dir) -> None:
    _, out = bundle_dir
    m = json.loads((out / "manifest.json").read_text())
    assert sorted(m["wheels"]) == ["hyrldemo_a-0.1-py3-none-any.whl", "hyrldemo_c-0.3-py3-none-any.whl"]
    assert m["excluded"] == ["hyrldemo-b==1.0"]  # the target's version, not the newer 2.0
    assert len(m["parts"]) >= 3 and all(p["bytes"] <= m["max_part_bytes"] for p in m["parts"])
    assert sum(p["bytes"] for p in m["parts"]) == m["total_bytes"]
    assert (out / "install.sh").is_file() and (out / "SHA256SUMS").is_file()


def test_install_from_parts_alone(bundle_dir, tmp_path: Path) -> None:
    _, out = bundle_dir
    target = tmp_path / "site"
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}
    proc = subprocess.run(["bash", str(out / "install.sh"), str(target), sys.executable], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    code = "import hyrldemo_a, hyrldemo_c; print(hyrldemo_a.VERSION, hyrldemo_c.VERSION)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "PYTHONPATH": str(target)})
    assert run.stdout.split() == ["0.1", "0.3"], run.stderr
    assert not (target / "hyrldemo_b").exists(), "the target's own hyrldemo-b must not be overwritten"


def test_corrupt_part_is_refused(bundle_dir, tmp_path: Path) -> None:
    import shutil

    _, out = bundle_dir
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    part = copy / "part-001"
    part.write_bytes(part.read_bytes()[:-10] + b"0123456789")
    proc = subprocess.run(["bash", str(copy / "install.sh"), str(tmp_path / "site")], capture_output=True, text=True)
    assert proc.returncode != 0 and "part-001" in proc.stdout + proc.stderr and "corrupt" in proc.stderr
    assert not (tmp_path / "site").exists()


def test_unresolvable_requirement_exits_2_with_pips_reason(tmp_path: Path, capsys) -> None:
    from hyrl.cli import main

    rc = main(["bundle", str(tmp_path / "o"), "--requirement", "hyrldemo-missing", "--no-index", "--find-links",
               str(tmp_path)])
    assert rc == 2 and "hyrldemo-missing" in capsys.readouterr().err


def test_override_replaces_every_requirement_on_a_package(tmp_path: Path, capsys) -> None:
    """Two dependents pin a version of ovr-b that has no wheel; ``--override ovr-b==1.0`` replaces both pins (extras
    and markers are still honoured, an override nobody needs adds nothing), and a target's version that meets no
    requirement is named."""
    from hyrl.cli import main

    _wheel(tmp_path, "ovr-a", "0.1", ["ovr-b>=2,<3", "ovr-c"], extras={"x": ["ovr-e"]})
    _wheel(tmp_path, "ovr-c", "0.2", ["ovr-b==2.5", "ovr-never; python_version < '3'"])
    _wheel(tmp_path, "ovr-b", "1.0", [])
    _wheel(tmp_path, "ovr-e", "0.4", ["ovr-c>=0.2"])
    base = ["--requirement", "ovr-a[x]", "--no-index", "--find-links", str(tmp_path / "wheels")]

    assert main(["bundle", str(tmp_path / "plain"), *base]) == 2
    assert "ovr-b" in capsys.readouterr().err  # pip's own resolution: the pins cannot be met

    out = tmp_path / "over"
    assert main(["bundle", str(out), *base, "--override", "ovr-b==1.0", "--override", "ovr-unused==9"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert sorted(m["wheels"]) == ["ovr_a-0.1-py3-none-any.whl", "ovr_b-1.0-py3-none-any.whl",
                                   "ovr_c-0.2-py3-none-any.whl", "ovr_e-0.4-py3-none-any.whl"]
    assert m["overrides"] == ["ovr-b==1.0", "ovr-unused==9"]

    (tmp_path / "freeze.txt").write_text("ovr-c==0.1\n")  # the target's ovr-c is older than ovr-e needs
    rc = main(["bundle", str(tmp_path / "conflict"), *base, "--override", "ovr-b==1.0", "--exclude-installed",
               str(tmp_path / "freeze.txt")])
    err = capsys.readouterr().err
    assert rc == 2 and "ovr-c==0.1" in err and "ovr-c>=0.2" in err


def test_with_adds_a_requirement_drop_leaves_one_out_and_a_bad_override_exits_2(tmp_path: Path, capsys) -> None:
    from hyrl.cli import main

    _wheel(tmp_path, "with-a", "0.1", ["with-kernels>=1"])  # an optional extra nobody built a wheel of
    _wheel(tmp_path, "with-b", "0.3", [])
    base = ["--requirement", "with-a", "--no-index", "--find-links", str(tmp_path / "wheels")]
    assert main(["bundle", str(tmp_path / "n"), *base, "--with", "with-b"]) == 2
    assert "with-kernels" in capsys.readouterr().err
    assert main(["bundle", str(tmp_path / "o"), *base, "--with", "with-b", "--drop", "with-kernels"]) == 0
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert sorted(m["wheels"]) == ["with_a-0.1-py3-none-any.whl", "with_b-0.3-py3-none-any.whl"]
    assert m["dropped"] == ["with-kernels"]
    assert main(["bundle", str(tmp_path / "p"), *base, "--override", "with-b=>1"]) == 2
    assert "with-b=>1" in capsys.readouterr().err
