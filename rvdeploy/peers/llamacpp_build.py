"""llama.cpp for a board: its source from the llama-cpp-python sdist on PyPI (vendor/llama.cpp), built once
per ISA flavour into the cache: static riscv64 executables, cross-compiled with clang-19 and lld (RVV and
the scalar/vector fp16 extensions on exactly when the target has them: llamacpp.toml), or, for the host
target (--board local), native executables for this machine's CPU.

  python -m rvdeploy.peers.llamacpp_build [--target spacemit-k1]     (scripts/build_llama_cpp.sh)

The sdist is fetched with pip (so pip's index settings apply); about 1 minute the first time, since pip
prepares its metadata. The build takes about 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path

from .. import ccache, children
from ..boards.launch import last_line
from ..errors import RvdeployError
from ..paths import cache_dir
from ..targets import Target, get_target

CONFIG = tomllib.loads(Path(__file__).with_name("llamacpp.toml").read_text())
SOURCE = CONFIG["source"]
TOOLS = tuple(CONFIG["build"]["tools"])
APT_HINT = "apt-get install cmake ninja-build clang-19 lld-19 libc6-dev-riscv64-cross libstdc++-12-dev-riscv64-cross"
# LLVM 19's assembler wants the tail/mask policy on every vsetvli/vsetivli; some of ggml's riscv64 inline
# asm omits it. The omitted policy means undisturbed (tu, mu), so adding it changes nothing else.
_VSET_NO_POLICY = re.compile(r'(vseti?vli\s+[^,"\n]+,\s*[^,"\n]+,\s*e\d+\s*,\s*mf?\d+)(?=\s*\\n)')
Step = Callable[[str], None]


def _noop(_: str) -> None:
    pass


def version() -> str:
    return f"{SOURCE['package']}-{SOURCE['version']}"


def root() -> Path:
    return cache_dir() / "llama.cpp" / version()


def fetch_sdist(step: Step = _noop) -> Path:
    """The sdist tarball, downloaded once with pip."""
    root().mkdir(parents=True, exist_ok=True)
    found = sorted(root().glob("*.tar.gz"))
    if found:
        return found[0]
    step(f"downloading the {SOURCE['package']}=={SOURCE['version']} sdist (llama.cpp's source)")
    with tempfile.TemporaryDirectory(dir=root(), prefix=".sdist-") as tmp:
        # the sdist itself, its build requirements as wheels (":all:" would compile cmake from source)
        proc = children.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                SOURCE["package"],
                f"{SOURCE['package']}=={SOURCE['version']}",
                "-d",
                tmp,
            ],
            capture_output=True,
            text=True,
        )
        got = sorted(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or not got:
            raise RvdeployError(
                f"cannot download the {SOURCE['package']}=={SOURCE['version']} sdist: {last_line(proc.stderr)}",
                hint="check that pip can reach the package index",
            )
        dest = root() / got[0].name
        os.replace(got[0], dest)
    return dest


def patch_inline_asm(tree: Path) -> int:
    """Add the policy to ggml's riscv64 vsetvli/vsetivli inline asm; returns how many were patched."""
    count = 0
    for path in sorted((tree / "ggml" / "src" / "ggml-cpu").rglob("*")):
        if path.suffix not in (".c", ".cpp", ".h") or not path.is_file():
            continue
        text = path.read_text()
        new, n = _VSET_NO_POLICY.subn(r"\1, tu, mu", text)
        if n:
            path.write_text(new)
            count += n
    return count


def source_dir(step: Step = _noop) -> Path:
    """llama.cpp's source tree (extracted from the sdist and patched), once."""
    src = root() / "src"
    if (src / ".complete").is_file():
        return src
    tarball = fetch_sdist(step)
    step("extracting llama.cpp's source")
    with tempfile.TemporaryDirectory(dir=root(), prefix=".src-") as tmp:
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp, filter="data")
        tops = [p for p in Path(tmp).iterdir() if p.is_dir()]
        tree = tops[0] / SOURCE["subdir"] if len(tops) == 1 else None
        if tree is None or not (tree / "CMakeLists.txt").is_file():
            raise RvdeployError(f"{tarball.name} has no {SOURCE['subdir']}/CMakeLists.txt (not llama.cpp's source?)")
        patch_inline_asm(tree)
        (tree / ".complete").touch()
        shutil.rmtree(src, ignore_errors=True)
        os.replace(tree, src)
    return src


def cmake_options(target: Target) -> list[str]:
    """-D options for the target: the common ones, then the host's (native) or riscv64's (the ISA switches)."""
    common = CONFIG["build"]["cmake"]
    if target.is_host:
        return [*common, *CONFIG["build"]["host_cmake"]]
    if target.arch != "riscv64":
        raise RvdeployError(f"target {target.name}: rvdeploy builds llama.cpp for riscv64 boards and this machine")
    features = set(target.cpu_features)
    isa = [
        f"-D{opt}={'ON' if feat in features else 'OFF'}"
        for opt, feat in sorted(CONFIG["build"]["riscv64_features"].items())
    ]
    return [*common, *CONFIG["build"]["riscv64_cmake"], *isa]


def build_key(target: Target) -> str:
    """One build per ISA flavour: for riscv64 the switches that are on (VLEN does not matter: ggml's RVV code
    reads it at run time); for the host, this machine's architecture (built for its own CPU)."""
    if target.is_host:
        return f"host-{platform.machine()}-native"
    on = [
        opt.removeprefix("GGML_").removeprefix("RV_").lower()
        for opt, feat in sorted(CONFIG["build"]["riscv64_features"].items())
        if feat in target.cpu_features
    ]
    return "-".join([target.arch, *on]) if on else target.arch


def _check_toolchain(target: Target) -> None:
    needed = ("cmake", "ninja") if target.is_host else ("cmake", "ninja", "clang-19", "clang++-19")
    for tool in needed:
        if shutil.which(tool) is None:
            raise RvdeployError(f"{tool} not found: needed to build llama.cpp", hint=APT_HINT)
    if not target.is_host and shutil.which("ld.lld-19") is None and shutil.which("ld.lld") is None:
        raise RvdeployError("ld.lld not found: needed to cross-build llama.cpp", hint=APT_HINT)


def _toolchain_options(target: Target) -> list[str]:
    """The host's own compilers, or clang-19 cross-compiling static riscv64 executables."""
    if target.is_host:
        return ["-G", "Ninja"]
    triple = "riscv64-linux-gnu"  # Debian's cross sysroot, found by clang itself
    return [
        "-G",
        "Ninja",
        "-DCMAKE_SYSTEM_NAME=Linux",
        "-DCMAKE_SYSTEM_PROCESSOR=riscv64",
        "-DCMAKE_C_COMPILER=clang-19",
        "-DCMAKE_CXX_COMPILER=clang++-19",
        f"-DCMAKE_C_COMPILER_TARGET={triple}",
        f"-DCMAKE_CXX_COMPILER_TARGET={triple}",
        "-DCMAKE_EXE_LINKER_FLAGS=-fuse-ld=lld -static",
    ]


def _configure_command(target: Target) -> list[str]:
    return [*_toolchain_options(target), *cmake_options(target)]


def bin_dir(target: Target) -> Path:
    """Named for the ISA flavour and keyed (rvdeploy.ccache) by the source version and the cmake options, so
    that a change of either builds anew."""
    key = ccache.key(command=[*_configure_command(target), "--target", *TOOLS], extra=[version()])
    return root() / f"bin-{build_key(target)}-{key[:12]}"


def build(target: Target | str, step: Step = _noop, jobs: int | None = None) -> Path:
    """The directory holding llama-bench, llama-quantize and llama-completion for the target; built once.
    Builds share the source tree and the cache folder, so a second process waits for the first (a lock)."""
    target = get_target(target) if isinstance(target, str) else target
    out = bin_dir(target)  # refuses a target it cannot build for (cmake_options), before any download

    def make(tmp: Path) -> None:
        src = source_dir(step)
        key = build_key(target)
        work = root() / f"build-{key}"
        log = root() / f"build-{key}.log"
        step(f"building llama.cpp for {key} (once, about 3 minutes)")
        _check_toolchain(target)
        log.write_text("")
        children.run_logged(
            ["cmake", "-S", str(src), "-B", str(work), *_configure_command(target)], log, what="configuring llama.cpp"
        )
        children.run_logged(
            ["cmake", "--build", str(work), "-j", str(jobs or os.cpu_count() or 2), "--target", *TOOLS],
            log,
            what="building llama.cpp",
        )
        for t in TOOLS:
            shutil.copy2(work / "bin" / t, tmp / t)

    # one lock for the whole folder: builds share the source tree
    return ccache.build_once(
        out,
        make,
        directory=True,
        lock=root() / ".lock",
        on_wait=step,
        ready=lambda d: all(os.access(d / t, os.X_OK) for t in TOOLS),
    )


def converter() -> tuple[Path, dict]:
    """convert_hf_to_gguf.py from the same source, and the environment it runs in (its gguf-py on the path)."""
    src = source_dir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(src / "gguf-py"), os.environ.get("PYTHONPATH")])),
    }
    return src / "convert_hf_to_gguf.py", env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="spacemit-k1", help="target profile whose ISA to build for")
    ap.add_argument("-j", "--jobs", type=int, default=None)
    args = ap.parse_args()
    try:
        out = build(args.target, step=lambda s: print(s, file=sys.stderr), jobs=args.jobs)
    except RvdeployError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(out)


if __name__ == "__main__":
    main()
