"""What a build is asked for (BuildRequest) and what its stages have made so far (BuildContext).

Each stage (one module here per stage, named as the CLI prints it) is `run(ctx) -> ctx`: it reads the fields
earlier stages set and sets its own; rvdeploy.build.chain runs them in order and times them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import runtime_build
from ..bundle import Bundle
from ..bundle.manifest import Quantization, Requirements, Runtime
from ..compiler import CompiledModule
from ..entrypoints import EntryModule
from ..genai_interface import GenaiConfig
from ..graphinfo import LlmGraph
from ..importer import ImportedGraphs
from ..kvcache import CacheLayout
from ..mmt4d import LoweredModule
from ..source import ModelFiles
from ..targets import Target
from ..ukernels import UkernelChoice


@dataclass(frozen=True)
class BuildRequest:
    """The build's inputs, checked (rvdeploy.api.build): what to build, for which target, and where to."""

    model: str
    variant: str
    revision: str | None
    target: Target
    pipeline: str  # rvdeploy.pipeline.PIPELINES
    ukernels: str | None  # the requested microkernel library (rvdeploy.ukernels), None: the default
    quantize: str | None  # rvdeploy.quantize.FORMATS
    max_context: int | None
    runtime_dir: Path | str | None  # --runtime
    no_runtime: bool
    out: Path  # the bundle directory, settled writable before any work
    force: bool
    archive: Path | None  # the .tar.gz to write too, if asked for
    on_progress: runtime_build.Progress = runtime_build.no_progress


@dataclass
class BuildContext:
    request: BuildRequest
    work: Path  # scratch directory for the stages' files
    # fetch
    files: ModelFiles | None = None
    # check: the graph as imported (after the genai interface, quantization and normalization)
    graph: LlmGraph | None = None
    genai: GenaiConfig | None = None
    context_length: int | None = None
    onnx: Path | None = None
    fused_ops_rewritten: dict = field(default_factory=dict)
    quantized: Quantization | None = None
    quantized_ops_rewritten: dict = field(default_factory=dict)
    # runtime: what runs on the board
    board_files: dict[str, Path] = field(default_factory=dict)  # bundle path -> source
    executables: set[str] = field(default_factory=set)
    runtime: Runtime | None = None
    requirements: Requirements | None = None
    probe: str | None = None  # the probe's bundle path (riscv64)
    runtime_built: runtime_build.RuntimeBuild | None = None  # a runtime this build had to make
    # import, entry points
    imported: ImportedGraphs | None = None
    kv_cache: CacheLayout | None = None  # decode keeps a fixed-capacity cache (rvdeploy.kvcache)
    entry: EntryModule | None = None
    # mmt4d lowering (mmt4d pipeline only)
    ukernels: UkernelChoice | None = None
    lowered: LoweredModule | None = None
    # pack weights, compile, inspect
    params: Path | None = None
    flags: list[str] = field(default_factory=list)
    compiled: CompiledModule | None = None
    dispatches: Path | None = None
    # bundle
    bundle: Bundle | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def module_mlir(self) -> Path:
        """The module to compile: the lowered one when the pipeline lowers, else the entry points' module."""
        return self.lowered.mlir if self.lowered is not None else self.entry.mlir
