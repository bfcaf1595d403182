"""The bundle's .tar.gz form and the board-side launcher, without a board: reproducible archives, unpacking
that refuses to write outside the bundle, and the launcher's own hash and architecture checks."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile

import pytest
from conftest import DEMO, TINY

from rvdeploy import api
from rvdeploy.bundle import Bundle, manifest, pack_bundle, unpack_bundle
from rvdeploy.bundle.names import PARAMETER_SCOPE, PARAMETERS
from rvdeploy.errors import RvdeployError


def test_manifest_has_requirements_runtime_and_launcher(built):
    m = built(str(DEMO)).manifest
    assert m.requirements.arch and m.requirements.vlen == 0
    assert m.runtime.kind == "host" and m.runtime.package == "iree-base-runtime"
    names = {f.path for f in m.files}
    assert m.launcher == "launcher.sh" and "launcher.sh" in names


def test_typed_manifest_writes_back_the_same_bytes(built):
    """manifest.json read into the typed Manifest and written again is the same text: the build writes through
    the same types every reader reads."""
    bundle = built(str(DEMO))
    assert bundle.manifest.to_json().encode() == bundle.raw
    m = bundle.manifest
    assert m.parameters.scope == PARAMETER_SCOPE and m.parameters.file == PARAMETERS and m.lists(PARAMETERS)
    assert m.pipeline.mmt4d.packed_weights and all(pw.k * pw.n for pw in m.pipeline.mmt4d.packed_weights)


@pytest.mark.parametrize(
    "change, field",
    [
        (
            lambda d: d["pipeline"]["mmt4d"]["tiles"].update(f32={"prefill": 7, "decode": "1x8x1"}),
            "pipeline.mmt4d.tiles.f32.prefill",
        ),
        (lambda d: d["pipeline"]["mmt4d"]["tiles"].update(f32="7x8x1"), "pipeline.mmt4d.tiles.f32"),
        (lambda d: d["pipeline"].update(compiler_flags="-O3"), "pipeline.compiler_flags"),
        (lambda d: d["runtime"].update(tools=[1]), "runtime.tools"),
    ],
)
def test_typed_fields_are_checked_first(built, change, field):
    """Every field the typed manifest reads is in the schema: a wrong type is one error naming it."""
    doc = json.loads(built(str(DEMO)).raw)
    change(doc)
    with pytest.raises(RvdeployError, match=f"where: not an rvdeploy manifest: {field}: "):
        manifest.parse(json.dumps(doc).encode(), "where")


def test_pack_is_reproducible_and_unpacks(built, tmp_path):
    bundle = built(str(DEMO))
    a = pack_bundle(bundle.path, tmp_path / "a.tar.gz")
    b = pack_bundle(bundle.path, tmp_path / "b.tar.gz")
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.uid, m.gid, m.mtime, m.uname) for m in members} == {(0, 0, 0, "")}
    out = unpack_bundle(a, tmp_path / "unpacked")
    out.verify()
    assert (out.path / "SHA256SUMS").read_text() == (bundle.path / "SHA256SUMS").read_text()


@pytest.mark.slow
def test_same_inputs_give_identical_bundles(tmp_path):
    a = api.build(str(TINY), out=tmp_path / "a", tar=True)
    b = api.build(str(TINY), out=tmp_path / "b", tar=True)
    assert a.archive.read_bytes() == b.archive.read_bytes()


def _evil_tar(path, add):
    with tarfile.open(path, "w:gz") as tar:
        add(tar)
    return path


def _file(tar, name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _link(tar, name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    tar.addfile(info)


@pytest.mark.parametrize(
    "case,needle",
    [
        (lambda t: _file(t, "/etc/evil"), "absolute path"),
        (lambda t: _file(t, "../evil"), "'..'"),
        (lambda t: _file(t, "runtime/../../evil"), "'..'"),
        (lambda t: _link(t, "model.vmfb", "/etc/passwd"), "link"),
        (lambda t: _link(t, "model.vmfb", "../../outside"), "link"),
        (lambda t: _link(t, "model.vmfb", "/etc/passwd", tarfile.LNKTYPE), "link"),
    ],
)
def test_unsafe_archives_are_refused(tmp_path, case, needle):
    tar = _evil_tar(tmp_path / "evil.tar.gz", lambda t: (_file(t, "manifest.json", b"{}"), case(t)))
    with pytest.raises(RvdeployError, match=needle):
        unpack_bundle(tar, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "evil").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz"]  # no staging left


def test_launcher_checks_hashes_and_architecture(built, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(built(str(DEMO)).path, copy)
    ok = subprocess.run(["sh", "launcher.sh", "check"], cwd=copy, capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == "ok", ok.stderr
    data = bytearray((copy / "model.vmfb").read_bytes())
    data[len(data) // 2] ^= 1  # one altered byte
    (copy / "model.vmfb").write_bytes(bytes(data))
    bad = subprocess.run(
        ["sh", "launcher.sh", "run", "iree-run-module", "--help"], cwd=copy, capture_output=True, text=True
    )
    assert bad.returncode == 3 and "model.vmfb" in bad.stderr and "sha256" in bad.stderr
    with pytest.raises(RvdeployError, match="model.vmfb"):
        Bundle.open(copy).verify()
