"""The CLI under hostile input and interruption (issue #14), one test (or group) per reported item: nothing
that rvdeploy did not write is deleted or overwritten, no process of rvdeploy's outlives it, every failure is
one `rvdeploy: error:` line and a non-zero exit. Real bundles (the demo model for this machine), real
archives, real processes."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from cli_run import one_line_error, rvdeploy
from conftest import DEMO, TINY

from rvdeploy.bundle import pack_bundle
from rvdeploy.errors import RvdeployError


@pytest.fixture
def bundle(built, tmp_path) -> Path:
    """A private copy of the demo bundle for this machine (tests alter it)."""
    copy = tmp_path / "B"
    shutil.copytree(built(str(DEMO)).path, copy)
    return copy


@pytest.fixture
def archive(built, tmp_path) -> Path:
    return pack_bundle(built(str(DEMO)).path, tmp_path / "B.tar.gz")


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ROOT with its bytes (None for directories): what a test compares before and after."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _write_manifest(bundle: Path, manifest) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest))


# ---- 1. --force replaces only what rvdeploy wrote ----------------------------------------------------------


def _lookalike(d: Path) -> dict:
    (d / "src").mkdir(parents=True)
    (d / "manifest.json").write_text('{"name": "x"}')
    (d / "src" / "a.js").write_text("code")
    (d / ".env").write_text("SECRET=1")
    return _tree(d)


def test_build_force_refuses_a_directory_with_a_foreign_manifest(tmp_path):
    before = _lookalike(tmp_path / "ext")
    proc = rvdeploy("build", "--model", "demo", "-o", str(tmp_path / "ext"), "--force")
    one_line_error(proc, "not an rvdeploy bundle", "manifest.json")
    assert _tree(tmp_path / "ext") == before


def test_unpack_force_refuses_a_directory_with_a_foreign_manifest(tmp_path, archive):
    before = _lookalike(tmp_path / "ext2")
    proc = rvdeploy("unpack", str(archive), "-o", str(tmp_path / "ext2"), "--force")
    one_line_error(proc, "not an rvdeploy bundle")
    assert _tree(tmp_path / "ext2") == before


def test_force_refuses_a_bundle_holding_a_file_it_does_not_list(tmp_path, bundle, archive):
    (bundle / "notes.txt").write_text("mine")
    proc = rvdeploy("unpack", str(archive), "-o", str(bundle), "--force")
    one_line_error(proc, "notes.txt")
    assert (bundle / "notes.txt").read_text() == "mine"


def test_force_replaces_a_bundle_and_an_empty_directory(tmp_path, bundle, archive):
    (bundle / "model.vmfb").write_bytes(b"damaged")  # still rvdeploy's: its files are the manifest's
    assert rvdeploy("unpack", str(archive), "-o", str(bundle), "--force").returncode == 0
    (tmp_path / "empty").mkdir()
    assert rvdeploy("unpack", str(archive), "-o", str(tmp_path / "empty"), "--force").returncode == 0
    assert rvdeploy("inspect", str(tmp_path / "empty")).returncode == 0
    assert not [p for p in tmp_path.iterdir() if ".old" in p.name or ".partial" in p.name]


# ---- 2. pack refuses an existing file ------------------------------------------------------------------------


def test_pack_does_not_overwrite_a_file(tmp_path, bundle):
    notes = tmp_path / "notes.txt"
    notes.write_text("notes")
    one_line_error(rvdeploy("pack", str(bundle), "-o", str(notes)), "already exists", "--force")
    one_line_error(rvdeploy("pack", str(bundle), "-o", str(notes), "--force"), "not a bundle archive")
    assert notes.read_text() == "notes"
    own = tmp_path / "own.tar.gz"
    assert rvdeploy("pack", str(bundle), "-o", str(own)).returncode == 0
    one_line_error(rvdeploy("pack", str(bundle), "-o", str(own)), "already exists")
    assert rvdeploy("pack", str(bundle), "-o", str(own), "--force").returncode == 0


# ---- 3. no process outlives rvdeploy -----------------------------------------------------------------------


def _processes_naming(path: Path | str, exclude: set[int]) -> dict[int, str]:
    """Live processes whose command line or working directory names PATH."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in exclude:
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(d / "cwd")
        except OSError:  # gone, or a zombie
            continue
        if str(path) in cmd or cwd == str(path):
            found[int(d.name)] = cmd
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_rvdeploy_alone_ends_its_children(bundle, sig):
    # a chat session whose runner waits on the board for the next turn: a child that runs until told otherwise
    proc = subprocess.Popen(
        [sys.executable, "-m", "rvdeploy", "chat", str(bundle), "--board", "local", "-n", "2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )  # signalled alone, by pid
    proc.stdin.write("Beautiful is\n")
    proc.stdin.flush()
    mine = {os.getpid(), proc.pid}
    deadline = time.time() + 120
    while not any("rvdeploy-runner" in c for c in _processes_naming(bundle, mine).values()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err, err
    deadline = time.time() + 5  # SIGKILL follows SIGTERM after rvdeploy.children.GRACE
    while _processes_naming(bundle, mine) and time.time() < deadline:
        time.sleep(0.1)
    assert _processes_naming(bundle, mine) == {}


# ---- 4. nothing hangs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e9"])
def test_temperature_has_a_range(bundle, value):
    proc = rvdeploy("run", str(bundle), "--board", "local", "-n", "2", "--temperature", value)
    assert proc.returncode == 2
    one_line_error(proc, "--temperature")


@pytest.mark.parametrize("command", ["probe", "run"])
def test_qemu_that_never_answers_is_stopped(tmp_path, built, command):
    fake = tmp_path / "bin" / "qemu-riscv64"
    fake.parent.mkdir()
    mark = "977.31415"  # the sleep's own command line: it does not name the script
    fake.write_text(f"#!/bin/sh\nsleep {mark}\n")
    fake.chmod(0o755)
    start = time.time()
    args = ["probe"] if command == "probe" else ["run", str(built(str(DEMO), target="rv64gcv-vlen256").path)]
    proc = rvdeploy(*args, "--board", "qemu", env={"PATH": f"{fake.parent}:{os.environ['PATH']}"})
    one_line_error(proc, "qemu-riscv64", "did not finish")
    assert time.time() - start < 60
    assert _processes_naming(fake, {os.getpid()}) == {} and _processes_naming(mark, {os.getpid()}) == {}


# ---- 5. a bundle always knows its context ------------------------------------------------------------------


def _model_dir(tmp_path: Path, config: str | None) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    for name in ("model.onnx", "tokenizer.json"):
        shutil.copyfile(TINY / name, d / name)
    if config is not None:
        (d / "config.json").write_text(config)
    return d


@pytest.mark.parametrize(
    "config,needle",
    [
        (None, "--max-context"),
        ("{not json", "config.json"),
        ("[1, 2]", "config.json"),
        ('{"max_position_embeddings": "abc"}', "max_position_embeddings"),
    ],
)
def test_unknown_context_is_refused(tmp_path, config, needle):
    proc = rvdeploy("build", "--model", str(_model_dir(tmp_path, config)), "-o", str(tmp_path / "out"))
    one_line_error(proc, needle)
    assert not (tmp_path / "out").exists()


def test_max_context_given_is_recorded_and_enforced(tmp_path):
    out = tmp_path / "out"
    proc = rvdeploy("build", "--model", str(_model_dir(tmp_path, None)), "-o", str(out), "--max-context", "64")
    assert proc.returncode == 0, proc.stderr
    assert _manifest(out)["max_context"] == 64
    one_line_error(rvdeploy("run", str(out), "-n", "100"), "context of 64")


@pytest.mark.parametrize("n", ["300", "100000"])
def test_run_past_the_context_is_refused(bundle, n):
    one_line_error(rvdeploy("run", str(bundle), "--board", "local", "-n", n), "context of 256")


# ---- 6. one line, never a traceback ------------------------------------------------------------------------


def test_output_that_is_a_file(tmp_path):
    f = tmp_path / "FILE"
    f.write_text("keep")
    one_line_error(rvdeploy("build", "--model", "demo", "-o", str(f), "--force"), "is a file")
    one_line_error(rvdeploy("build", "--model", "demo", "-o", str(f / "sub")), "not a directory")
    assert f.read_text() == "keep"


def test_output_in_an_immutable_directory(tmp_path, bundle):
    d = tmp_path / "immutable"
    d.mkdir()
    if subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        one_line_error(rvdeploy("build", "--model", "demo", "-o", str(d / "b")), "cannot write", str(d))
        one_line_error(rvdeploy("pack", str(bundle), "-o", str(d / "b.tar.gz")), "cannot write")
    finally:
        subprocess.run(["chattr", "-i", str(d)], check=True)
    assert list(d.iterdir()) == []


def test_unpack_into_the_working_directory(tmp_path, archive):
    here = tmp_path / "here"
    here.mkdir()
    (here / "keep").write_text("keep")
    proc = subprocess.run(
        [sys.executable, "-m", "rvdeploy", "unpack", str(archive), "-o", ".", "--force"],
        cwd=here,
        capture_output=True,
        text=True,
    )
    one_line_error(proc, "not an rvdeploy bundle")
    (here / "keep").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "rvdeploy", "unpack", str(archive), "-o", ".", "--force"],
        cwd=here,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (here / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["B.tar.gz", "here"]  # no '..old-*' or staging left


def test_tar_onto_a_directory_is_refused_before_work(tmp_path):
    (tmp_path / "b.tar.gz").mkdir()
    proc = rvdeploy("build", "--model", "demo", "-o", str(tmp_path / "b"), "--tar")
    one_line_error(proc, "--tar", "is a directory")
    assert not (tmp_path / "b").exists()


def test_pack_to_a_directory(tmp_path, bundle):
    one_line_error(rvdeploy("pack", str(bundle), "-o", str(tmp_path)), "is a directory")


def _retar(src: Path, dst: Path, extra=(), replace: dict | None = None) -> Path:
    """A copy of the archive SRC with members added (EXTRA: (name, data or None for a directory)) or
    replaced."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w:gz") as tout:
        for m in tin.getmembers():
            data = (replace or {}).get(m.name, tin.extractfile(m).read())
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data))
        for name, data in extra:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tout.addfile(info)
            else:
                info.size = len(data)
                tout.addfile(info, io.BytesIO(data))
    return dst


@pytest.mark.parametrize("name", [".", "./", "model.vmfb/x", "notes.txt", "runtime/extra"])
def test_unlisted_archive_members_are_refused(tmp_path, archive, name):
    evil = _retar(archive, tmp_path / "evil.tar.gz", extra=[(name, b"x")])
    one_line_error(rvdeploy("unpack", str(evil), "-o", str(tmp_path / "out")), "not a file the manifest lists")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["B.tar.gz", "evil.tar.gz"]


def test_directory_members_of_the_bundle_are_accepted(tmp_path, archive):
    """`tar -C DIR .` writes './' and './name': harmless, and unpacked like rvdeploy's own archive."""
    ok = _retar(archive, tmp_path / "ok.tar.gz", extra=[(".", None), ("./", None)])
    assert rvdeploy("unpack", str(ok), "-o", str(tmp_path / "out")).returncode == 0


def test_prompt_that_is_not_utf8(bundle):
    one_line_error(rvdeploy("run", str(bundle), "--prompt", os.fsdecode(b"\xff\xfe")), "UTF-8")


def _no_files(m):
    del m["files"]


def _no_target(m):
    del m["target"]


def _entry_without_path(m):
    del m["files"][0]["path"]


def _context_text(m):
    m["max_context"] = "abc"


@pytest.mark.parametrize(
    "change",
    [lambda m: [], lambda m: "x", _no_files, _no_target, _entry_without_path, _context_text],
    ids=["list", "string", "no-files", "no-target", "entry-without-path", "max-context-text"],
)
@pytest.mark.parametrize("command", ["run", "inspect", "pack"])
def test_malformed_manifest(tmp_path, bundle, change, command):
    m = _manifest(bundle)
    changed = change(m)
    _write_manifest(bundle, m if changed is None else changed)
    args = {
        "run": ["run", str(bundle), "-n", "4"],
        "inspect": ["inspect", str(bundle)],
        "pack": ["pack", str(bundle), "-o", str(tmp_path / "x.tar.gz")],
    }[command]
    one_line_error(rvdeploy(*args), "manifest")
    assert not (tmp_path / "x.tar.gz").exists()


def test_corrupt_dispatch_report(bundle):
    (bundle / "dispatches.json").write_text('{"contractions": [{"entry": 1}]}')
    one_line_error(rvdeploy("inspect", str(bundle)), "dispatches.json")


@pytest.mark.parametrize("spec", ["127.0.0.1:²", "@host", "host\n", "-oProxyCommand=x"])
def test_bad_board_spec(bundle, spec):
    one_line_error(rvdeploy("run", str(bundle), "--board", spec), "--board")


# ---- 7. pack reads only the bundle -------------------------------------------------------------------------


@pytest.mark.parametrize("outside", ["/etc/hostname", "../../../../etc/hostname"])
def test_pack_refuses_a_manifest_naming_a_file_outside(tmp_path, bundle, outside):
    from rvdeploy.bundle import sha256_file

    target = Path("/etc/hostname")
    if not target.is_file():
        pytest.skip("no /etc/hostname")
    m = _manifest(bundle)
    m["files"].append({"path": outside, "size": target.stat().st_size, "sha256": sha256_file(target)})
    _write_manifest(bundle, m)
    one_line_error(
        rvdeploy("pack", str(bundle), "-o", str(tmp_path / "x.tar.gz")),
        "manifest",
        "outside" if ".." in outside else "absolute",
    )
    assert not (tmp_path / "x.tar.gz").exists()


def test_pack_refuses_a_link_out_of_the_bundle(tmp_path, bundle):
    (bundle / "tokenizer.json").unlink()
    (bundle / "tokenizer.json").symlink_to(DEMO / "tokenizer.json")  # the same bytes, outside the bundle
    one_line_error(rvdeploy("pack", str(bundle), "-o", str(tmp_path / "x.tar.gz")), "tokenizer.json", "link")
    assert not (tmp_path / "x.tar.gz").exists()


# ---- 8. the smaller ones ---------------------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_archives_get_a_normal_file_mode(tmp_path, bundle):
    assert rvdeploy("pack", str(bundle), "-o", str(tmp_path / "a.tar.gz")).returncode == 0
    assert (tmp_path / "a.tar.gz").stat().st_mode & 0o777 == 0o666 & ~_umask()


@pytest.mark.slow
def test_build_tar_mode_and_force(tmp_path):
    out = tmp_path / "b"
    assert rvdeploy("build", "--model", "demo", "-o", str(out), "--tar").returncode == 0
    assert (tmp_path / "b.tar.gz").stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert (out / "manifest.json").stat().st_mode & 0o777 == 0o644
    assert rvdeploy("build", "--model", "demo", "-o", str(out), "--tar", "--force").returncode == 0


def test_plot_into_a_directory_is_refused_before_measuring(tmp_path, bundle):
    one_line_error(rvdeploy("bench", str(bundle), "--board", "local", "--plot", str(tmp_path)), ".png")
    assert not (tmp_path.with_name(tmp_path.name + ".png")).exists()


def test_plot_says_the_file_it_wrote(tmp_path, bundle):
    png = tmp_path / "chart.png"
    proc = rvdeploy("bench", str(bundle), "--board", "local", "-p", "4", "-n", "2", "-r", "1", "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {png}" in proc.stderr and png.read_bytes().startswith(b"\x89PNG")
    one_line_error(rvdeploy("bench", str(bundle), "--board", "local", "--plot", str(png)), "--force")


def test_baseline_bundle_error_names_the_bundle(bundle):
    proc = rvdeploy("bench", str(bundle), "--board", "local", "--compare", "baseline", "--baseline-bundle", str(bundle))
    line = one_line_error(proc, "not a baseline build", f"as {bundle}")
    assert "{" not in line


def test_launcher_names_only_the_altered_file(bundle):
    (bundle / "config.json").write_text("{}")
    proc = subprocess.run(["sh", "launcher.sh", "check"], cwd=bundle, capture_output=True, text=True)
    assert proc.returncode == 3
    assert "config.json (altered" in proc.stderr and "sha256sum (" not in proc.stderr, proc.stderr


def test_unpack_errors_name_the_archive(tmp_path, archive):
    with tarfile.open(archive) as tar:
        original = tar.extractfile("tokenizer.json").read()
    damaged = _retar(archive, tmp_path / "damaged.tar.gz", replace={"tokenizer.json": original[:-1] + b" "})
    line = one_line_error(rvdeploy("unpack", str(damaged), "-o", str(tmp_path / "out")), str(damaged), "tokenizer.json")
    assert ".partial" not in line


def test_local_board_checks_sha256sums(bundle):
    sums = (bundle / "SHA256SUMS").read_text()
    (bundle / "SHA256SUMS").write_text(sums.replace("config.json", "config.jsom"))
    one_line_error(rvdeploy("run", str(bundle), "--board", "local", "-n", "2"), "SHA256SUMS")


@pytest.mark.parametrize("threads", ["1000", "0", "65"])
def test_threads_have_a_range(bundle, threads):
    one_line_error(rvdeploy("bench", str(bundle), "--board", "local", "--threads", threads), "--threads")


# ---- 9. sim up and binfmt_misc's F flag --------------------------------------------------------------------


def test_binfmt_entry_without_fix_binary_is_refused(tmp_path):
    """A binfmt_misc tree as the kernel shows it (a private copy: this machine's registration is untouched)."""
    from rvdeploy import sim

    (tmp_path / "register").write_text("")
    (tmp_path / "qemu-riscv64").write_text(
        "enabled\ninterpreter /usr/libexec/qemu-binfmt/riscv64-binfmt-P\n"
        "flags: PO\noffset 0\nmagic 7f454c46\nmask ffffffff\n"
    )
    with pytest.raises(RvdeployError, match=r"flags 'PO', without F .*No such file or directory"):
        sim.ensure_binfmt(tmp_path)
    assert (tmp_path / "register").read_text() == ""  # nothing registered


def test_binfmt_registration_carries_fix_binary():
    from rvdeploy import sim

    assert sim.with_fix_binary(":qemu-riscv64:M::\\x7f\\x45:\\xff\\xff:/usr/bin/qemu-riscv64:PO\n").endswith(":POF")
    assert sim.with_fix_binary(":qemu-riscv64:M::\\x7f:\\xff:/q:OPF").endswith(":OPF")
    conf = next((Path(c) for c in sim.BINFMT_CONF if Path(c).is_file()), None)
    if conf is not None:  # this machine's qemu-user definition, as `sim up` would register it
        assert "F" in sim.with_fix_binary(conf.read_text()).rpartition(":")[2]
