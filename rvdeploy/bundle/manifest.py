"""The manifest as typed values: what a build writes into manifest.json and what every reader (run, bench, the
boards, the peers, inspect) reads, one schema for both.

`Manifest.from_dict` is the only reader of manifest.json's dictionary: it takes a document that passed the
schema check (rvdeploy.bundle.schema, manifest_schema.toml), so every field it reads has its JSON type;
`parse` does both from the file's bytes. `Manifest.to_dict` gives the document back, key for key, for
json.dumps(sort_keys=True): the same build writes the same bytes. Descriptive parts whose contents belong to
another module (the target profile, the graph's op counts, the microkernel library's provenance) are kept
whole in `extra` and written back as they came.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from ..errors import RvdeployError
from . import schema
from .names import MODULE, PARAMETER_SCOPE, PARAMETERS

SCHEMA_VERSION = 1


def _known(d: dict, *names: str) -> dict:
    """D without the keys a typed part reads itself: the rest, kept as it came."""
    return {k: v for k, v in d.items() if k not in names}


def _without_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    executable: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> "FileEntry":
        return cls(d["path"], d["size"], d["sha256"], bool(d.get("executable")))

    def to_dict(self) -> dict:
        d = {"path": self.path, "size": self.size, "sha256": self.sha256}
        if self.executable:
            d["executable"] = True
        return d


@dataclass(frozen=True)
class Graph:
    """The ONNX graph's facts the runner and the estimates use (rvdeploy.graphinfo.LlmGraph); `extra` holds
    the rest of what graphinfo reports (opset, op counts, ...)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int | None = None
    dtype: str | None = None
    path: str | None = None  # the ONNX file's name in its source
    extra: dict = field(default_factory=dict)

    _FIELDS = ("inputs", "outputs", "num_layers", "num_kv_heads", "head_dim", "vocab_size", "dtype", "path")

    @classmethod
    def from_dict(cls, d: dict) -> "Graph":
        return cls(
            tuple(d["inputs"]),
            tuple(d["outputs"]),
            d["num_layers"],
            d["num_kv_heads"],
            d["head_dim"],
            d.get("vocab_size"),
            d.get("dtype"),
            d.get("path"),
            _known(d, *cls._FIELDS),
        )

    def to_dict(self) -> dict:
        return self.extra | {
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "num_layers": self.num_layers,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "dtype": self.dtype,
            "path": self.path,
        }


@dataclass(frozen=True)
class Quantization:
    """rvdeploy's own quantization of the graph (build --quantize)."""

    format: str
    by: str | None = None
    matmuls: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "Quantization":
        return cls(d["format"], d.get("by"), d.get("matmuls"))

    def to_dict(self) -> dict:
        return {"format": self.format, "by": self.by, "matmuls": self.matmuls}


@dataclass(frozen=True)
class Model:
    id: str
    variant: str
    source: str  # how it was found: hub, dir, file, demo (rvdeploy.source)
    graph: Graph
    revision: str | None = None
    quantized: Quantization | None = None
    quantized_ops_rewritten: dict | None = None  # rvdeploy.qgraph.normalize: what it rewrote
    fused_ops_rewritten: dict | None = None  # rvdeploy.genai_interface.prepare: what it rewrote

    @property
    def precision(self) -> str:
        """rvdeploy's own quantization if it has one, else the ONNX variant the bundle was built from."""
        return (self.quantized.format if self.quantized else None) or self.variant or "fp32"

    @classmethod
    def from_dict(cls, d: dict) -> "Model":
        q = d.get("quantized")
        return cls(
            d["id"],
            d["variant"],
            d["source"],
            Graph.from_dict(d["graph"]),
            d.get("revision"),
            Quantization.from_dict(q) if q else None,
            d.get("quantized_ops_rewritten"),
            d.get("fused_ops_rewritten"),
        )

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "revision": self.revision,
            "variant": self.variant,
            "quantized": self.quantized.to_dict() if self.quantized else None,
            "quantized_ops_rewritten": self.quantized_ops_rewritten,
            "fused_ops_rewritten": self.fused_ops_rewritten,
            "source": self.source,
            "graph": self.graph.to_dict(),
        }


@dataclass(frozen=True)
class TargetInfo:
    """The target profile the bundle was compiled for; `extra` is the rest of the profile (targets/*.toml)."""

    name: str
    arch: str
    qemu_cpu: str
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "TargetInfo":
        return cls(d["name"], d["arch"], d["qemu_cpu"], _known(d, "name", "arch", "qemu_cpu"))

    def to_dict(self) -> dict:
        return self.extra | {"name": self.name, "arch": self.arch, "qemu_cpu": self.qemu_cpu}


@dataclass(frozen=True)
class PackedWeight:
    k: int
    n: int
    packed_shape: tuple[int, ...]  # (N1, K1, N0, K0): the layout the mmt4d kernel reads
    key: str | None = None  # its parameter key in model.irpa

    @classmethod
    def from_dict(cls, d: dict) -> "PackedWeight":
        return cls(d["k"], d["n"], tuple(d["packed_shape"]), d.get("key"))

    def to_dict(self) -> dict:
        return {"key": self.key, "k": self.k, "n": self.n, "packed_shape": list(self.packed_shape)}


@dataclass(frozen=True)
class TilePair:
    """An element type's mmt4d tiles, as "M0xN0xK0" text (prefill; decode has M0 = 1)."""

    prefill: str
    decode: str

    def to_dict(self) -> dict:
        return {"prefill": self.prefill, "decode": self.decode}


@dataclass(frozen=True)
class Mmt4d:
    """What the mmt4d lowering did."""

    packed_weights: tuple[PackedWeight, ...] = ()
    tiles: dict[str, TilePair] = field(default_factory=dict)  # element type -> tiles
    lowered_contractions: int = 0
    q4_contractions: int = 0
    q4_kernel_contractions: int = 0  # of the q4 ones, those on the RVV 4-bit kernels (rvdeploy.q4kernel)
    not_lowered: tuple[str, ...] = ()  # why, for each contraction left to IREE

    @classmethod
    def from_dict(cls, d: dict) -> "Mmt4d":
        return cls(
            tuple(PackedWeight.from_dict(p) for p in d["packed_weights"]),
            {elt: TilePair(t["prefill"], t["decode"]) for elt, t in (d.get("tiles") or {}).items()},
            d.get("lowered_contractions") or 0,
            d.get("q4_contractions") or 0,
            d.get("q4_kernel_contractions") or 0,
            tuple(d.get("not_lowered") or ()),
        )

    def to_dict(self) -> dict:
        return {
            "tiles": {elt: t.to_dict() for elt, t in self.tiles.items()},
            "lowered_contractions": self.lowered_contractions,
            "q4_contractions": self.q4_contractions,
            "q4_kernel_contractions": self.q4_kernel_contractions,
            "packed_weights": [p.to_dict() for p in self.packed_weights],
            "not_lowered": list(self.not_lowered),
        }


@dataclass(frozen=True)
class Ukernels:
    """The mmt4d microkernel library linked (rvdeploy.ukernels.UkernelChoice.to_dict); `extra`: its
    provenance (clang, flags, hashes) and note."""

    library: str
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "Ukernels":
        return cls(d["library"], _known(d, "library"))

    def to_dict(self) -> dict:
        return self.extra | {"library": self.library}


@dataclass(frozen=True)
class Pipeline:
    name: str  # "mmt4d" | "baseline" (rvdeploy.pipeline.PIPELINES)
    description: str | None = None
    compiler_flags: tuple[str, ...] = ()  # exactly what iree-compile was given
    ukernels: Ukernels | None = None
    mmt4d: Mmt4d | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "Pipeline":
        uk, mm = d.get("ukernels"), d.get("mmt4d")
        return cls(
            d["name"],
            d.get("description"),
            tuple(d.get("compiler_flags") or ()),
            Ukernels.from_dict(uk) if uk else None,
            Mmt4d.from_dict(mm) if mm else None,
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "compiler_flags": list(self.compiler_flags),
            "ukernels": self.ukernels.to_dict() if self.ukernels else None,
            "mmt4d": self.mmt4d.to_dict() if self.mmt4d else None,
        }


@dataclass(frozen=True)
class Compiler:
    version: str
    name: str = "iree-compile"

    @classmethod
    def from_dict(cls, d: dict) -> "Compiler":
        return cls(d["version"], d.get("name") or "iree-compile")

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version}


@dataclass(frozen=True)
class Runner:
    """The runner (rvdeploy/runner) a host bundle carries."""

    version: str | None = None
    source: dict | None = None  # where it was built from (rvdeploy.runtime_build)

    def to_dict(self) -> dict:
        return {"version": self.version, "source": self.source}


@dataclass(frozen=True)
class Runtime:
    """The IREE runtime the bundle carries: kind "bundled" (riscv64: IREE's tools and the runner in `dir`),
    "host" (the board's iree-base-runtime `package`; the runner in `dir`) or "none" (`hint`: how to get one)."""

    kind: str
    arch: str | None = None
    version: str | None = None
    source: dict | None = None  # where the tools came from (rvdeploy.runtime_build), if known
    dir: str | None = None
    tools: tuple[str, ...] | None = None
    package: str | None = None
    runner: Runner | None = None
    hint: str | None = None

    # the fields each kind writes (null ones included): the manifest's bytes do not depend on which are None
    KIND_FIELDS = {
        "bundled": ("kind", "arch", "version", "source", "dir", "tools"),
        "host": ("kind", "package", "version", "dir", "tools", "runner"),
        "none": ("kind", "arch", "hint"),
    }

    @classmethod
    def from_dict(cls, d: dict) -> "Runtime":
        tools, runner = d.get("tools"), d.get("runner")
        return cls(
            d["kind"],
            d.get("arch"),
            d.get("version"),
            d.get("source"),
            d.get("dir"),
            tuple(tools) if tools is not None else None,
            d.get("package"),
            Runner(runner.get("version"), runner.get("source")) if runner else None,
            d.get("hint"),
        )

    def to_dict(self) -> dict:
        d = {
            "kind": self.kind,
            "arch": self.arch,
            "version": self.version,
            "source": self.source,
            "dir": self.dir,
            "tools": list(self.tools) if self.tools is not None else None,
            "package": self.package,
            "runner": self.runner.to_dict() if self.runner else None,
            "hint": self.hint,
        }
        keep = self.KIND_FIELDS.get(self.kind)
        return {k: d[k] for k in keep} if keep else _without_none(d)


@dataclass(frozen=True)
class Requirements:
    """What a board must have (rvdeploy.launcher.requirements): architecture, exact VLEN (0: any), extensions."""

    arch: str
    vlen: int
    extensions: tuple[str, ...]

    @classmethod
    def from_dict(cls, d: dict) -> "Requirements":
        return cls(d["arch"], d["vlen"], tuple(d["extensions"]))

    def to_dict(self) -> dict:
        return {"arch": self.arch, "vlen": self.vlen, "extensions": list(self.extensions)}


@dataclass(frozen=True)
class Parameters:
    scope: str = PARAMETER_SCOPE
    file: str = PARAMETERS

    @classmethod
    def from_dict(cls, d: dict) -> "Parameters":
        return cls(d["scope"], d["file"])

    def to_dict(self) -> dict:
        return {"scope": self.scope, "file": self.file}


@dataclass(frozen=True)
class KVCache:
    """A module that keeps its KV cache at a fixed capacity (rvdeploy.kvcache): the entry points take the
    token ids and the count of cached tokens instead of the cache tensors."""

    layers: int
    kv_heads: int
    head_dim: int
    capacity: int
    element_type: str
    layout: str
    updated: str = "in place"

    @classmethod
    def from_dict(cls, d: dict) -> "KVCache":
        return cls(
            d["layers"],
            d["kv_heads"],
            d["head_dim"],
            d["capacity"],
            d["element_type"],
            d["layout"],
            d.get("updated", "in place"),
        )

    def to_dict(self) -> dict:
        return {
            "layers": self.layers,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "capacity": self.capacity,
            "element_type": self.element_type,
            "layout": self.layout,
            "updated": self.updated,
        }


@dataclass(frozen=True)
class Manifest:
    rvdeploy_version: str
    model: Model
    target: TargetInfo
    pipeline: Pipeline
    compiler: Compiler
    entry_points: dict[str, str]  # name -> signature, as MLIR types
    max_context: int
    runtime: Runtime
    requirements: Requirements
    parameters: Parameters = field(default_factory=Parameters)
    tokenizer: str | None = None  # bundle file names
    tokenizer_config: str | None = None
    eos_token_ids: tuple[int, ...] = ()
    launcher: str | None = None
    probe: str | None = None
    kv_cache: KVCache | None = None  # None: the entry points take and return the cache tensors
    files: tuple[FileEntry, ...] = ()  # filled in by write_bundle, which hashes the files
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        """A manifest document that passed schema.check -> the typed manifest."""
        return cls(
            d["rvdeploy_version"],
            Model.from_dict(d["model"]),
            TargetInfo.from_dict(d["target"]),
            Pipeline.from_dict(d["pipeline"]),
            Compiler.from_dict(d["compiler"]),
            dict(d["entry_points"]),
            d["max_context"],
            Runtime.from_dict(d["runtime"]),
            Requirements.from_dict(d["requirements"]),
            Parameters.from_dict(d["parameters"]),
            d.get("tokenizer"),
            d.get("tokenizer_config"),
            tuple(d.get("eos_token_ids") or ()),
            d.get("launcher"),
            d.get("probe"),
            KVCache.from_dict(d["kv_cache"]) if d.get("kv_cache") else None,
            tuple(FileEntry.from_dict(f) for f in d["files"]),
            d["schema_version"],
        )

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "rvdeploy_version": self.rvdeploy_version,
            "model": self.model.to_dict(),
            "target": self.target.to_dict(),
            "pipeline": self.pipeline.to_dict(),
            "compiler": self.compiler.to_dict(),
            "entry_points": dict(self.entry_points),
            "tokenizer": self.tokenizer,
            "tokenizer_config": self.tokenizer_config,
            "eos_token_ids": list(self.eos_token_ids),
            "max_context": self.max_context,
            "parameters": self.parameters.to_dict(),
            "requirements": self.requirements.to_dict(),
            "runtime": self.runtime.to_dict(),
            "launcher": self.launcher,
            "probe": self.probe,
            "kv_cache": self.kv_cache.to_dict() if self.kv_cache else None,
            "files": [f.to_dict() for f in self.files],
        }

    def to_json(self) -> str:
        """manifest.json's text: sorted keys, no timestamps (same build, same bytes)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def with_files(self, files) -> "Manifest":
        return replace(self, files=tuple(files), schema_version=SCHEMA_VERSION)

    # ---- what readers ask of it ----
    def lists(self, name: str) -> bool:
        return any(f.path == name for f in self.files)

    def entry(self, name: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == name), None)

    @property
    def model_bytes(self) -> int:
        """The compiled module and the parameter files: what a board loads."""
        return sum(f.size for f in self.files if f.path == MODULE or f.path.endswith(".irpa"))

    @property
    def parameter_bytes(self) -> int:
        return sum(f.size for f in self.files if f.path.endswith(".irpa"))

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def parse(data: bytes, where: str) -> Manifest:
    """manifest.json's bytes -> the checked, typed manifest (one RvdeployError naming WHERE otherwise)."""
    try:
        doc = json.loads(data)
    except json.JSONDecodeError as exc:
        raise RvdeployError(f"{where}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    except (ValueError, RecursionError):  # not UTF-8, or nested deeper than the parser goes
        raise RvdeployError(f"{where}: not a JSON manifest") from None
    version = doc.get("schema_version") if isinstance(doc, dict) else None
    if isinstance(doc, dict) and version != SCHEMA_VERSION:
        raise RvdeployError(
            f"{where}: schema_version {version!r}, this rvdeploy reads {SCHEMA_VERSION}",
            hint="rebuild the bundle with this rvdeploy",
        )
    return Manifest.from_dict(schema.check(doc, where))


def checked(manifest: Manifest, where: str) -> Manifest:
    """MANIFEST as written passes the schema (a failure is rvdeploy's own bug, reported like a bad file)."""
    schema.check(json.loads(manifest.to_json()), where)
    return manifest


def problem(doc) -> str | None:
    """The first way a parsed manifest.json departs from the schema, or None (rvdeploy.bundle.outputs: is a
    directory rvdeploy's bundle?)."""
    found = schema.problems(doc)
    return found[0] if found else None


def listed_files(doc: dict) -> set[str]:
    """The file names a schema-valid manifest document lists."""
    return {f.path for f in Manifest.from_dict(doc).files}
