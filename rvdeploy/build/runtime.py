"""Stage runtime: what runs on the board beside the module. The launcher's requirements, the probe (riscv64)
and the runtime (riscv64: IREE's tools and rvdeploy's runner; host: the runner, IREE's tools from
iree-base-runtime on the board): resolved, and built from IREE's sources when none is registered, before any
compile work, so a missing toolchain or a bad --runtime fails before minutes of it."""

from __future__ import annotations

import platform

from .. import launcher, runtime_build, runtimes
from ..bundle.manifest import Requirements, Runner, Runtime
from ..bundle.names import RUNTIME_DIR
from ..errors import RvdeployError
from ..probe import NAME as PROBE_NAME, probe_binary
from .context import BuildContext

PROBE_PATH = f"probe/{PROBE_NAME}"
HOST_RUNTIME_PACKAGE = "iree-base-runtime"


def build_and_register(
    source=None,
    ref: str | None = None,
    jobs: int | None = None,
    progress: runtime_build.Progress = runtime_build.no_progress,
    arch: str = "riscv64",
) -> tuple[runtimes.Runtime, runtime_build.RuntimeBuild]:
    """Build (or find in the cache) an IREE runtime with rvdeploy's runner from IREE's sources (riscv64, or
    "host": this machine's runner) and register it."""
    result = runtime_build.build(source=source, ref=ref, jobs=jobs, progress=progress, arch=arch)
    return runtimes.add(result.path), result


def _resolve(ctx: BuildContext) -> runtimes.Runtime | None:
    """The registered (or given) runtime for the target, built when there is none; None with --no-runtime."""
    req, tgt = ctx.request, ctx.request.target
    if req.no_runtime and tgt.is_host:
        raise RvdeployError("--no-runtime is for riscv64 targets: host bundles carry this machine's runner")
    if req.no_runtime and req.runtime_dir is not None:
        raise RvdeployError("--runtime and --no-runtime contradict each other", hint="pass one of them")
    if req.no_runtime:
        return None
    rt = runtimes.for_arch(platform.machine() if tgt.is_host else tgt.arch, req.runtime_dir)
    if rt is not None and req.runtime_dir is None and runtime_build.stale(rt.path):
        rt = None  # built by an older rvdeploy: rebuilt (cached by source) with the current runner
    if rt is None:
        rt, ctx.runtime_built = build_and_register(progress=req.on_progress, arch="host" if tgt.is_host else tgt.arch)
    return rt


def run(ctx: BuildContext) -> BuildContext:
    tgt = ctx.request.target
    rt = _resolve(ctx)
    if rt is not None:
        for tool in runtimes.required_tools(rt.arch):
            ctx.board_files[f"{RUNTIME_DIR}/{tool}"] = rt.path / tool
            ctx.executables.add(f"{RUNTIME_DIR}/{tool}")
    if tgt.is_host:
        # IREE's own tools (iree-run-module, iree-benchmark-module) come from iree-base-runtime on the board
        ctx.runtime = Runtime(
            "host",
            package=HOST_RUNTIME_PACKAGE,
            version=runtimes.host_runtime_version(),
            dir=RUNTIME_DIR,
            tools=tuple(runtimes.HOST_TOOLS),
            runner=Runner(rt.version, rt.source),
        )
    else:
        ctx.board_files[PROBE_PATH] = probe_binary()
        ctx.executables.add(PROBE_PATH)
        ctx.probe = PROBE_PATH
        if rt is None:
            ctx.runtime = Runtime("none", arch=tgt.arch, hint=runtimes.BUILD_HINT)
            ctx.warnings.append(
                f"--no-runtime: the bundle cannot run until it has a {tgt.arch} IREE runtime ({runtimes.BUILD_HINT})"
            )
        else:
            ctx.runtime = Runtime(
                "bundled",
                arch=rt.arch,
                version=rt.version,
                source=rt.source,
                dir=RUNTIME_DIR,
                tools=tuple(runtimes.TOOLS),
            )
    ctx.requirements = Requirements.from_dict(launcher.requirements(tgt))
    return ctx
