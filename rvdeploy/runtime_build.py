"""`rvdeploy runtime build`: IREE's runtime tools and rvdeploy's runner built from IREE's sources.

No package registry ships a riscv64 IREE runtime, so rvdeploy builds one: iree-run-module,
iree-benchmark-module and rvdeploy-runner (rvdeploy/runner/runner.c, on IREE's runtime C API), static, for
rv64gc (the module carries the vector code, so one runtime serves every riscv64 target), with Debian's
clang-19/lld-19 and riscv64 cross libc, cmake >= 3.26 and ninja (PyPI), and the host tools IREE's build runs
(iree-flatcc-cli, iree-c-embed-data) taken from the installed iree-base-runtime wheel. For this machine
(`arch="host"`) only the runner is built: host bundles run IREE's own tools from iree-base-runtime. Recipe
(options, toolchain, tools per architecture) in runtime_build.toml.

Sources, in this order: `--source DIR|FILE.tar.gz` (a tree laid out as `iree/` with third_party/flatcc and
third_party/benchmark filled in), `$RVDEPLOY_IREE_SOURCE`, else a shallow git clone of the release tag that
matches the installed iree-base-compiler. The result is cached under ~/.cache/rvdeploy/iree-runtime keyed by
the source's content, the recipe and the toolchain's versions, so a second build is instant; builds of the
same cache wait for each other (a file lock); an interrupted or failed build leaves the cache as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import tarfile
import tempfile
import time
import tomllib
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from . import children
from .bundle import sha256_file
from .errors import RvdeployError
from .filelock import exclusive
from .paths import cache_dir

CONFIG = tomllib.loads(Path(__file__).with_name("runtime_build.toml").read_text())
RUNNER_DIR = Path(__file__).with_name("runner")
ARCHES = tuple(CONFIG["arch"])  # "riscv64", "host"
ENV_SOURCE = "RVDEPLOY_IREE_SOURCE"
INFO_FILE = "BUILD.json"  # beside the tools: where they came from (read back by runtimes.inspect_runtime)
_NINJA_STEP = re.compile(r"^\[(\d+)/(\d+)\]")

# progress(phase, done, total): phase is a short phrase; done/total are ninja steps (None while unknown)
Progress = Callable[[str, "int | None", "int | None"], None]


def no_progress(*_) -> None:
    pass


def cache_root() -> Path:
    return cache_dir() / "iree-runtime"


def tools(arch: str) -> tuple[str, ...]:
    """The programs a runtime of ARCH ("riscv64" or "host") holds."""
    return tuple(CONFIG["arch"][arch]["tools"])


@dataclass(frozen=True)
class IreeSource:
    kind: str  # "archive" | "directory" | "git"
    origin: str  # the archive or directory given, or the git URL
    ref: str | None  # git tag (kind "git")
    commit: str | None  # git commit when known
    version: str  # IREE's runtime/version.json package-version, or the release of the tag
    digest: str  # the content's identity for the cache key
    tree: Path  # the IREE top directory to build from

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("tree")
        return d


@dataclass(frozen=True)
class RuntimeBuild:
    path: Path  # directory holding the tools, VERSION and BUILD.json
    info: dict  # BUILD.json
    cached: bool
    seconds: float


# ---------------------------------------------------------------------------------------------- sources
def compiler_release() -> str:
    try:
        version = metadata.version("iree-base-compiler")
    except metadata.PackageNotFoundError:
        raise RvdeployError("iree-base-compiler is not installed", hint="pip install iree-base-compiler==3.13.0")
    m = re.match(r"\d+\.\d+\.\d+", version)
    return m.group(0) if m else version


def default_ref() -> str:
    return CONFIG["source"]["tag_prefix"] + compiler_release()


def _iree_top(d: Path) -> Path | None:
    """The IREE tree in D: D itself or D/iree (the layout of IREE's source archives here)."""
    marker = CONFIG["source"]["marker"]
    for top in (d / "iree", d):
        if (top / marker).is_file() and (top / "CMakeLists.txt").is_file():
            return top
    return None


def _check_tree(d: Path, origin: str) -> Path:
    top = _iree_top(d)
    if top is None:
        raise RvdeployError(
            f"{origin} is not IREE's source: no iree/{CONFIG['source']['marker']}",
            hint="pass IREE's source tree (or a .tar.gz of it laid out as iree/)",
        )
    for sub, marker in CONFIG["source"]["submodule_markers"].items():
        if not (top / marker).is_file():
            raise RvdeployError(
                f"{origin}: IREE's submodule {sub} is missing (empty or absent)",
                hint=f"git submodule update --init {' '.join(CONFIG['source']['submodules'])}",
            )
    return top


def _version_of(top: Path) -> str:
    try:
        return json.loads((top / "runtime" / "version.json").read_text())["package-version"]
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def _tree_digest(top: Path) -> str:
    """Identity of a source directory from names, sizes and mtimes (reading ~100 MB on every build would
    cost more than the check is worth); a git checkout is named by its commit instead."""
    commit = _git_commit(top)
    if commit:
        return "git-" + commit
    h = hashlib.sha256()
    for sub in ("CMakeLists.txt", "build_tools", "runtime", "tools", *CONFIG["source"]["submodules"]):
        base = top / sub
        paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for p in paths:
            st = p.stat()
            h.update(f"{p.relative_to(top)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "tree-" + h.hexdigest()


def _git_commit(top: Path) -> str | None:
    if not (top / ".git").exists() or shutil.which("git") is None:
        return None
    proc = children.run(["git", "-C", str(top), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _from_archive(path: Path) -> IreeSource:
    digest = sha256_file(path)
    dest = cache_root() / "src" / digest[:16]
    if not (dest / ".complete").is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
        try:
            try:
                with tarfile.open(path) as tar:
                    tar.extractall(tmp, filter="data")
            except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
                why = " ".join(str(exc).split())[:200]  # tarfile's message spans lines
                raise RvdeployError(f"{path} is not a readable .tar.gz of IREE's source ({why})")
            _check_tree(tmp, str(path))
            (tmp / ".complete").touch()
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    top = _check_tree(dest, str(path))
    return IreeSource("archive", str(path), None, None, _version_of(top), "sha256-" + digest, top)


def _from_directory(path: Path) -> IreeSource:
    top = _check_tree(path, str(path))
    commit = _git_commit(top)
    return IreeSource("directory", str(path), None, commit, _version_of(top), _tree_digest(top), top)


def _from_git(ref: str, progress: Progress) -> IreeSource:
    if shutil.which("git") is None:
        raise RvdeployError(
            "git not found: needed to fetch IREE's source",
            hint=f"apt-get install git, or pass --source DIR|FILE.tar.gz (or set {ENV_SOURCE})",
        )
    url = CONFIG["source"]["git_url"]
    dest = cache_root() / "src" / f"git-{re.sub(r'[^A-Za-z0-9._-]', '_', ref)}"
    if not (dest / ".complete").is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
        try:
            progress(f"cloning IREE {ref} (shallow, runtime submodules only)", None, None)
            tree = tmp / "iree"
            log = tmp / "git.log"
            children.run_logged(
                ["git", "clone", "--depth", "1", "--branch", ref, url, str(tree)],
                log,
                what=f"cloning {url} at {ref}",
                hint=f"offline? pass --source DIR|FILE.tar.gz (or set {ENV_SOURCE}) with IREE's source",
            )
            children.run_logged(
                [
                    "git",
                    "-C",
                    str(tree),
                    "submodule",
                    "update",
                    "--init",
                    "--depth",
                    "1",
                    *CONFIG["source"]["submodules"],
                ],
                log,
                what="fetching IREE's runtime submodules",
            )
            _check_tree(tmp, url)
            log.unlink()
            (tmp / ".complete").touch()
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    top = _check_tree(dest, url)
    commit = _git_commit(top)
    m = re.fullmatch(re.escape(CONFIG["source"]["tag_prefix"]) + r"(\d+\.\d+\.\d+)", ref)
    version = m.group(1) if m else _version_of(top)
    return IreeSource("git", url, ref, commit, version, "git-" + (commit or ref), top)


def resolve_source(
    source: Path | str | None = None, ref: str | None = None, progress: Progress = no_progress
) -> IreeSource:
    """--source, else $RVDEPLOY_IREE_SOURCE, else the release tag (--ref or the compiler's) from git."""
    given = source if source is not None else os.environ.get(ENV_SOURCE) or None
    if given is None:
        return _from_git(ref or default_ref(), progress)
    if ref is not None:
        raise RvdeployError(
            f"--ref selects a git tag to clone; it cannot apply to --source {given}", hint="drop one of them"
        )
    path = Path(given).expanduser().absolute()
    where = "--source" if source is not None else ENV_SOURCE
    if not path.exists():
        raise RvdeployError(f"{where} {path} does not exist")
    return _from_archive(path) if path.is_file() else _from_directory(path)


# ------------------------------------------------------------------------------------------- toolchain
def _version_tuple(text: str) -> tuple[int, ...]:
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g or 0) for g in m.groups()) if m else ()


def _cmake() -> tuple[str, str]:
    """cmake >= 3.26: PyPI's cmake package first (Debian 12's is 3.25), else one on PATH."""
    candidates = []
    try:
        import cmake as cmake_pkg  # PyPI: cmake

        candidates.append(str(Path(cmake_pkg.CMAKE_BIN_DIR) / "cmake"))
    except (ImportError, AttributeError):
        pass
    if shutil.which("cmake"):
        candidates.append(shutil.which("cmake"))
    need = _version_tuple(CONFIG["toolchain"]["cmake_min"])
    found = []
    for exe in candidates:
        proc = children.run([exe, "--version"], capture_output=True, text=True)
        version = proc.stdout.splitlines()[0] if proc.returncode == 0 and proc.stdout else ""
        if _version_tuple(version) >= need:
            return exe, version.strip()
        found.append(version.strip() or exe)
    raise RvdeployError(
        f"cmake >= {CONFIG['toolchain']['cmake_min']} not found" + (f" (found {', '.join(found)})" if found else ""),
        hint="pip install 'cmake>=3.26'",
    )


def _ninja() -> str:
    try:
        import ninja as ninja_pkg  # PyPI: ninja

        exe = Path(ninja_pkg.BIN_DIR) / "ninja"
        if exe.is_file():
            return str(exe)
    except (ImportError, AttributeError):
        pass
    exe = shutil.which("ninja")
    if exe is None:
        raise RvdeployError("ninja not found: needed to build IREE's runtime", hint="pip install ninja")
    return exe


def host_tools_dir() -> Path:
    """iree-base-runtime's wheel ships the host build tools IREE's runtime build runs."""
    try:
        import iree._runtime_libs as libs
    except ImportError:
        raise RvdeployError(
            "iree-base-runtime is not installed: its host tools (iree-flatcc-cli, "
            "iree-c-embed-data) are needed to build IREE's runtime",
            hint="pip install iree-base-runtime==3.13.0",
        )
    d = Path(libs.__path__[0])
    missing = [t for t in CONFIG["build"]["host_tools"] if not os.access(d / t, os.X_OK)]
    if missing:
        raise RvdeployError(
            f"{d} lacks {', '.join(missing)} (an iree-base-runtime without its host tools)",
            hint="pip install --force-reinstall iree-base-runtime==3.13.0",
        )
    return d


def toolchain(arch: str = "riscv64") -> dict:
    """Every program the build needs, checked before any work, with the versions that key the cache."""
    tc = CONFIG["toolchain"]
    for name in (tc["c_compiler"], tc["cxx_compiler"], tc["ar"], tc["ranlib"], tc["linker"]):
        if shutil.which(name) is None:
            raise RvdeployError(f"{name} not found: needed to build IREE's runtime for {arch}", hint=tc["apt_hint"])
    if CONFIG["arch"][arch]["cross"] and not (Path(tc["sysroot"]) / "lib" / "libc.a").is_file():
        raise RvdeployError(f"the riscv64 C library is missing ({tc['sysroot']}/lib/libc.a)", hint=tc["apt_hint"])
    cmake, cmake_version = _cmake()
    clang = children.run([tc["c_compiler"], "--version"], capture_output=True, text=True).stdout
    host = host_tools_dir()
    return {
        "cmake": cmake,
        "cmake_version": cmake_version,
        "ninja": _ninja(),
        "clang": (clang.splitlines() or ["unknown"])[0].strip(),
        "host_tools": str(host),
        "host_tools_sha256": {t: sha256_file(host / t) for t in CONFIG["build"]["host_tools"]},
    }


def toolchain_file(arch: str = "riscv64") -> str:
    """CMake settings: clang-19 cross-compiling static rv64gc executables, or clang-19 for this machine."""
    tc = CONFIG["toolchain"]
    if not CONFIG["arch"][arch]["cross"]:
        return "\n".join(
            [
                f"set(CMAKE_C_COMPILER {tc['c_compiler']})",
                f"set(CMAKE_CXX_COMPILER {tc['cxx_compiler']})",
                f"set(CMAKE_AR {shutil.which(tc['ar']) or tc['ar']})",
                f"set(CMAKE_RANLIB {shutil.which(tc['ranlib']) or tc['ranlib']})",
                'set(CMAKE_EXE_LINKER_FLAGS_INIT "-fuse-ld=lld")',
                "",
            ]
        )
    flags = f"-march={tc['march']} -mabi={tc['mabi']}"
    return "\n".join(
        [
            "set(CMAKE_SYSTEM_NAME Linux)",
            "set(CMAKE_SYSTEM_PROCESSOR riscv64)",
            f"set(CMAKE_C_COMPILER {tc['c_compiler']})",
            f"set(CMAKE_CXX_COMPILER {tc['cxx_compiler']})",
            *(f"set(CMAKE_{lang}_COMPILER_TARGET {tc['triple']})" for lang in ("C", "CXX", "ASM")),
            f"set(CMAKE_AR {shutil.which(tc['ar']) or tc['ar']})",
            f"set(CMAKE_RANLIB {shutil.which(tc['ranlib']) or tc['ranlib']})",
            *(f'set(CMAKE_{lang}_FLAGS_INIT "{flags}")' for lang in ("C", "CXX", "ASM")),
            'set(CMAKE_EXE_LINKER_FLAGS_INIT "-fuse-ld=lld -static")',
            f"set(CMAKE_FIND_ROOT_PATH {tc['sysroot']})",
            "set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)",
            *(f"set(CMAKE_FIND_ROOT_PATH_MODE_{kind} ONLY)" for kind in ("LIBRARY", "INCLUDE", "PACKAGE")),
            "",
        ]
    )


# ------------------------------------------------------------------------------------------------ build
def runner_digest() -> str:
    h = hashlib.sha256()
    for name in CONFIG["build"]["runner_sources"]:
        h.update(name.encode() + b"\0" + (RUNNER_DIR / name).read_bytes() + b"\0")
    return h.hexdigest()


def build_key(src: IreeSource, tc: dict, arch: str = "riscv64") -> str:
    recipe = {
        "source": src.digest,
        "arch": arch,
        "cmake": CONFIG["build"]["cmake"],
        "tools": tools(arch),
        "runner": runner_digest(),
        "toolchain_file": toolchain_file(arch),
        "cmake_version": tc["cmake_version"],
        "clang": tc["clang"],
        "host_tools": tc["host_tools_sha256"],
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def stale(runtime_dir: Path) -> bool:
    """A runtime this rvdeploy built from an older runner source: its runner may not speak the current
    protocol, so builds replace it (a runtime registered by hand, without BUILD.json, is taken as it is)."""
    try:
        info = json.loads((Path(runtime_dir) / INFO_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("runner_sha256") not in (None, runner_digest())


def _complete(out: Path, arch: str) -> bool:
    return (out / INFO_FILE).is_file() and all(os.access(out / t, os.X_OK) for t in tools(arch))


def machine(arch: str) -> str:
    """The ELF architecture a runtime of ARCH holds ("host" is this machine's)."""
    return platform.machine() if arch == "host" else arch


def build(
    source: Path | str | None = None,
    ref: str | None = None,
    jobs: int | None = None,
    progress: Progress = no_progress,
    arch: str = "riscv64",
) -> RuntimeBuild:
    """The directory of an IREE runtime for ARCH built from SOURCE (see the module doc); built once."""
    if arch not in ARCHES:
        raise RvdeployError(f"unknown runtime architecture {arch!r}", hint="known: " + ", ".join(ARCHES))
    start = time.perf_counter()
    tc = toolchain(arch)  # every missing tool is named before any download or extraction
    root = cache_root()
    with exclusive(root / ".lock", on_wait=lambda msg: progress(msg, None, None)):
        src = resolve_source(source, ref, progress)
        key = build_key(src, tc, arch)
        out = root / f"rt-{arch}-{key}"
        if _complete(out, arch):
            return RuntimeBuild(out, json.loads((out / INFO_FILE).read_text()), True, time.perf_counter() - start)
        work = root / f".build-{key}"
        log = root / f"build-{key}.log"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        log.write_text("")
        ok = False
        where = {"riscv64": "riscv64", "host": f"this machine ({machine(arch)})"}[arch]
        try:
            (work / "toolchain.cmake").write_text(toolchain_file(arch))
            progress(f"configuring IREE's runtime for {where} (cmake)", None, None)
            children.run_logged(
                [
                    tc["cmake"],
                    "-G",
                    "Ninja",
                    "-S",
                    str(RUNNER_DIR),
                    "-B",
                    str(work / "b"),
                    f"-DIREE_ROOT={src.tree}",
                    f"-DCMAKE_MAKE_PROGRAM={tc['ninja']}",
                    f"-DCMAKE_TOOLCHAIN_FILE={work / 'toolchain.cmake'}",
                    f"-DIREE_HOST_BIN_DIR={tc['host_tools']}",
                    *CONFIG["build"]["cmake"],
                ],
                log,
                what="configuring IREE's runtime (cmake)",
            )

            def on_line(line: str) -> None:
                m = _NINJA_STEP.match(line)
                if m:
                    progress(f"building IREE's runtime for {where}", int(m.group(1)), int(m.group(2)))

            children.run_logged(
                [tc["ninja"], "-C", str(work / "b"), f"-j{jobs or os.cpu_count() or 2}", *tools(arch)],
                log,
                what="building IREE's runtime",
                on_line=on_line,
            )
            info = {
                "arch": machine(arch),
                "version": src.version,
                "source": src.to_dict(),
                "key": key,
                "tools": list(tools(arch)),
                "static": CONFIG["arch"][arch]["static"],
                "march": CONFIG["toolchain"]["march"] if CONFIG["arch"][arch]["cross"] else "native",
                "toolchain": {k: tc[k] for k in ("clang", "cmake_version")},
                "cmake_options": CONFIG["build"]["cmake"],
                "runner_sha256": runner_digest(),
            }
            tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".rt-{key}-"))
            try:
                for tool, built in CONFIG["arch"][arch]["tools"].items():
                    shutil.copy2(work / "b" / built, tmp / tool)
                (tmp / "VERSION").write_text(src.version + "\n")
                (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
                shutil.rmtree(out, ignore_errors=True)
                os.replace(tmp, out)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            ok = True
        finally:
            shutil.rmtree(work, ignore_errors=True)  # ~100 MB of objects; the cache keeps only the tools
            if ok:
                log.unlink(missing_ok=True)
    return RuntimeBuild(out, info, False, time.perf_counter() - start)
