"""Property-based fuzzing (hypothesis) of what a hostile user controls: the manifest of a bundle, the member
list of a bundle archive, and the CLI's option values. Whatever comes in, rvdeploy either succeeds or prints
one `rvdeploy: error:` line (never a traceback, never the catch-all "unexpected" line that marks a bug), and
writes nothing outside its output. rvdeploy's own entry point runs in this process (a subprocess per example
would take minutes); the bundles, archives and IREE runs are real."""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import signal
import tarfile
import tempfile
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from conftest import DEMO
from hypothesis import HealthCheck, given, settings, strategies as st

from rvdeploy.boards.spec import parse_ssh
from rvdeploy.bundle import Bundle, pack_bundle
from rvdeploy.cli import main
from rvdeploy.errors import RvdeployError

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
HOSTILE_TEXT = [
    "",
    ".",
    "..",
    "/",
    "./",
    "../x",
    "/etc/hostname",
    "../../../../etc/hostname",
    "a/../b",
    "model.vmfb/x",
    "model.vmfb",
    "manifest.json",
    "SHA256SUMS",
    "runtime/",
    "runtime//x",
    "x\ny",
    "tokenizer.json",
    "-rf",
    "$(touch pwned)",
    "`id`",
    "a b",
    "é",
    "\udcff",
]
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(HOSTILE_TEXT),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def cli(*args) -> tuple[int, str]:
    """rvdeploy's entry point (rvdeploy.cli.main) here: (exit code, stderr). The signal handlers it installs
    are put back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    return code, err.getvalue()


def assert_clean(code: int, stderr: str) -> None:
    """Success, or exactly one error line (after progress lines) that is not the catch-all for bugs."""
    assert "Traceback" not in stderr, stderr
    if code == 0:
        return
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.endswith("...")]
    assert len(lines) == 1 and lines[0].startswith("rvdeploy: error: "), stderr
    assert not lines[0].startswith("rvdeploy: error: unexpected"), lines[0]


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


@contextmanager
def workspace():
    """A fresh directory W inside a fresh directory T: anything written outside W (an escape upward) shows in T."""
    with tempfile.TemporaryDirectory(prefix="rvdeploy-fuzz-") as t:
        w = Path(t) / "w"
        w.mkdir()
        yield w
        assert [p.name for p in Path(t).iterdir()] == ["w"], list(Path(t).iterdir())


@pytest.fixture(scope="module")
def demo(built) -> Path:
    return built(str(DEMO)).path


# ---- the manifest ------------------------------------------------------------------------------------------


def _paths(value, prefix=()) -> list[tuple]:
    """Every key path into a JSON document (list indices included)."""
    found = [prefix] if prefix else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found += _paths(v, prefix + (k,))
    return found


def _mutate(manifest: dict, path: tuple, value, delete: bool) -> dict:
    m = copy.deepcopy(manifest)
    parent = m
    for k in path[:-1]:
        parent = parent[k]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return m


@st.composite
def manifests(draw, original: dict):
    if draw(st.integers(0, 9)) == 0:  # now and then not a manifest at all
        return draw(JSON)
    m = original
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(m)
        if not paths:
            break
        m = _mutate(m, draw(st.sampled_from(paths)), draw(JSON), draw(st.booleans()))
    return m


def test_fuzz_manifest(demo):
    original = json.loads((demo / "manifest.json").read_text())
    listed = {f["path"] for f in original["files"]}

    @settings(FUZZ, max_examples=80)
    @given(manifests(original))
    def check(manifest):
        with workspace() as w:
            b = w / "B"
            shutil.copytree(demo, b)
            (b / "manifest.json").write_text(json.dumps(manifest))
            before = _tree(w)
            for args in (
                ("inspect", b),
                ("run", b, "--board", "local", "-n", "1"),
                ("bench", b, "--estimate", "--target", "spacemit-k1"),
                ("bench", b, "--board", "local", "-p", "2", "-n", "1", "-r", "1"),
                ("pack", b, "-o", w / "out.tar.gz"),
            ):
                assert_clean(*cli(*args))
            after = _tree(w)
            after.pop("out.tar.gz", None)
            assert after == before
            if (w / "out.tar.gz").exists():  # packed: nothing but the bundle's own files, as they are there
                with tarfile.open(w / "out.tar.gz") as tar:
                    for m in tar.getmembers():
                        assert m.name in listed | {"manifest.json", "SHA256SUMS"}
                        if m.name != "SHA256SUMS":
                            assert tar.extractfile(m).read() == (b / m.name).read_bytes()

    check()


# ---- the dispatch report that inspect reads --------------------------------------------------------------------


@st.composite
def reports(draw, original: dict):
    """The bundle's real dispatches.json with a few fields of its rows replaced (or, now and then, anything)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    report = copy.deepcopy(original)
    for _ in range(draw(st.integers(1, 3))):
        rows = draw(st.sampled_from([k for k in ("contractions", "packs") if report[k]]))
        row = draw(st.sampled_from(report[rows]))
        key = draw(st.sampled_from(sorted(row)))
        shape_like = st.from_regex(r"[0-9a?x]{0,6}( \* [0-9a?x]{0,6})? -> [0-9a?x]{0,6}|[0-9a?x]{0,8}", fullmatch=True)
        row[key] = draw(JSON | shape_like)
    return report


def test_fuzz_dispatch_report(demo):
    original = json.loads((demo / "dispatches.json").read_text())

    @settings(FUZZ, max_examples=80)
    @given(reports(original))
    def check(report):
        with workspace() as w:
            b = w / "B"
            shutil.copytree(demo, b)
            (b / "dispatches.json").write_text(json.dumps(report))
            before = _tree(w)
            assert_clean(*cli("inspect", b))
            assert_clean(*cli("inspect", b, "--json"))
            assert _tree(w) == before

    check()


# ---- the archive's member list -------------------------------------------------------------------------------

KINDS = ("file", "dir", "symlink", "hardlink", "fifo")


@st.composite
def member_lists(draw, real: list[tuple[str, bytes]]):
    """The real archive's members, then a few of: drop, duplicate, rename, replace the data, add a member of
    any kind and any (often hostile) name."""
    members = [(name, "file", data) for name, data in real]
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["drop", "duplicate", "rename", "data", "add"]))
        i = draw(st.integers(0, max(len(members) - 1, 0)))
        if op == "add" or not members:
            name = draw(st.sampled_from(HOSTILE_TEXT[:-1]) | st.text(alphabet="ab./", max_size=8))
            members.insert(i, (name, draw(st.sampled_from(KINDS)), draw(st.binary(max_size=16))))
        elif op == "drop":
            members.pop(i)
        elif op == "duplicate":
            members.insert(i, members[i])
        elif op == "rename":
            members[i] = (draw(st.sampled_from(HOSTILE_TEXT[:-1])), *members[i][1:])
        else:
            members[i] = (members[i][0], members[i][1], draw(st.binary(max_size=64)))
    return members


def _write_tar(path: Path, members) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            info.linkname = "../../outside" if kind in ("symlink", "hardlink") else ""
            tar.addfile(info)


def test_fuzz_archive_members(demo):
    with tempfile.TemporaryDirectory() as t:
        with tarfile.open(pack_bundle(demo, Path(t) / "B.tar.gz")) as tar:
            real = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]

    @settings(FUZZ, max_examples=80)
    @given(member_lists(real), st.sampled_from([None, "foreign", "empty"]))
    def check(members, existing):
        with workspace() as w:
            archive = w / "B.tar.gz"
            _write_tar(archive, members)
            out = w / "out"
            if existing == "foreign":
                (out / "src").mkdir(parents=True)
                (out / "manifest.json").write_text('{"name": "x"}')
                (out / "src" / "a.js").write_text("code")
            elif existing == "empty":
                out.mkdir()
            before = _tree(w)
            code, err = cli("unpack", archive, "-o", out, *(["--force"] if existing else []))
            assert_clean(code, err)
            assert sorted(p.name for p in w.iterdir()) == sorted(
                {"B.tar.gz", *(["out"] if code == 0 or existing else [])}
            )
            if code != 0:
                assert _tree(w) == before
                return
            assert existing != "foreign"
            bundle = Bundle.open(out)
            bundle.verify()
            listed = {f.path for f in bundle.manifest.files} | {"manifest.json", "SHA256SUMS"}
            assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == listed

    check()


# ---- option values -------------------------------------------------------------------------------------------

VALUES = (
    (
        st.integers()
        | st.floats()
        | st.text(max_size=10)
        | st.sampled_from(
            [
                "",
                "-1",
                "0",
                "1",
                "64",
                "65",
                "1e400",
                "nan",
                "inf",
                "-inf",
                "0x10",
                "²",
                " 5",
                "3.5",
                "1000000000000000000000",
            ]
        )
    )
    .map(str)
    .filter(lambda v: "\x00" not in v)
)


def _option_commands(b: Path, w: Path) -> list:
    """(argv before the value, argv after it): every numeric option, with the value where it goes. Runs that
    pass validation stay short: bench --estimate measures nothing, build stops at a model that is not there,
    sim up at a --name it refuses."""
    estimate = ["bench", b, "--estimate", "--target", "spacemit-k1"]
    return [
        (["run", b, "--board", "local", "-n"], []),
        ([*estimate, "-p"], []),
        ([*estimate, "-n"], []),
        ([*estimate, "-r"], []),
        ([*estimate, "--threads"], []),
        (["run", b, "--board", "local", "-n", "1", "--temperature"], []),
        (["run", b, "--board", "local", "-n", "1", "--temperature", "1", "--top-k"], []),
        (["run", b, "--board", "local", "-n", "1", "--temperature", "1", "--top-p"], []),
        (["run", b, "--board", "local", "-n", "1", "--temperature", "1", "--seed"], []),
        (["build", "--model", w / "no-model", "-o", w / "out", "--max-context"], []),
        (["sim", "up", "--vlen"], ["--name", "not a name!"]),
        (["run", b, "--board", "local", "-n", "2", "--prompt"], []),
    ]


def test_fuzz_option_values(demo):
    @settings(FUZZ, max_examples=150)
    @given(
        st.integers(0, 8),
        VALUES | st.binary(min_size=1, max_size=12).map(os.fsdecode).filter(lambda v: "\x00" not in v),
    )
    def check(which, value):
        with workspace() as w:
            before, after = _option_commands(demo, w)[which]
            assert_clean(*cli(*before, value, *after))
            assert list(w.iterdir()) == []

    check()


@settings(FUZZ, max_examples=300)
@given(
    st.text(max_size=24)
    | st.sampled_from(
        ["@host", "u@", "h:²", "[::1]:22", "a@b@c", "-oProxyCommand=x", "host\n", "h:65536", "h:0", "h:022"]
    )
)
def test_fuzz_board_spec(spec):
    """--board values that reach ssh are exactly [user@]host[:port] in the characters ssh takes as a host:
    anything else is refused before a name is looked up."""
    try:
        user, host, port = parse_ssh(spec)
    except RvdeployError as exc:
        assert "--board" in str(exc)
        return
    assert host and not host.startswith("-") and host.isascii() and "\n" not in host
    assert user is None or (user and user.isascii())
    assert port is None or (port.isdigit() and port.isascii() and 0 < int(port) < 65536)
