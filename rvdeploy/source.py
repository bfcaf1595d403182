"""Model intake: turn what the user named (demo, a hub repo id, a directory, an .onnx file) into local files.

Hub models come through huggingface_hub's own `snapshot_download` into the standard cache, restricted to
the files the chosen variant needs (rvdeploy/variants.toml). The cache location, offline mode and endpoint
are read from the environment at call time (HF_HUB_CACHE / HUGGINGFACE_HUB_CACHE / HF_HOME,
HF_HUB_OFFLINE, HF_ENDPOINT), not only when huggingface_hub was imported. The access token is left to
huggingface_hub (HF_TOKEN, or the token stored by `hf auth login`); this module never reads or prints it.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Iterator

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from rvdeploy import genai_variants
from rvdeploy.errors import RvdeployError

DEFAULT_MODEL = "onnx-community/Llama-3.2-1B-Instruct"
DEMO_DIR = Path(__file__).parent / "models" / "demo"

# Graph files bigger than this are not parsed here to check their external data (graphs with external
# data are small; a big one holds its weights inline). graphinfo.inspect_graph checks every graph.
_EXTERNAL_CHECK_MAX_BYTES = 512 << 20

_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9_.\-]+$")
_SHORT_SHA_RE = re.compile(r"^[0-9a-f]{7,39}$")
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class ModelFiles:
    onnx: Path  # the graph file (external data files beside it, as the ONNX references them)
    tokenizer: Path | None  # tokenizer.json
    config: Path | None  # config.json
    model_id: str  # "demo", the hub repo id, or the local path as given
    revision: str | None  # for hub: the resolved commit sha; else None
    variant: str  # fp32 | fp16 | int8 | q4 | q4f16 | ...
    kind: str  # "hub" | "dir" | "file" | "demo"

    def to_dict(self) -> dict:
        return {
            "onnx": str(self.onnx),
            "tokenizer": str(self.tokenizer) if self.tokenizer else None,
            "config": str(self.config) if self.config else None,
            "model_id": self.model_id,
            "revision": self.revision,
            "variant": self.variant,
            "kind": self.kind,
        }


@dataclass(frozen=True)
class Variant:
    name: str
    graph: str  # path inside the repo, e.g. "onnx/model_fp16.onnx"
    weights: str

    @property
    def filename(self) -> str:
        return PurePosixPath(self.graph).name


@dataclass(frozen=True)
class _Table:
    variants: dict[str, Variant]
    external_data: tuple[str, ...]  # templates with "{graph}"
    support_files: tuple[str, ...]


@lru_cache(maxsize=1)
def _table() -> _Table:
    data = tomllib.loads((Path(__file__).parent / "variants.toml").read_text())
    variants = {
        name: Variant(name, entry["graph"], entry.get("weights", "")) for name, entry in data["variants"].items()
    }
    return _Table(variants, tuple(data["external_data"]), tuple(data["support_files"]))


def variants() -> dict[str, Variant]:
    """Known variants (rvdeploy/variants.toml), in table order."""
    return dict(_table().variants)


def hub_patterns(variant: str) -> list[str]:
    """The allow_patterns used for a variant: its graph, its external data files, tokenizer and config files."""
    t = _table()
    graph = t.variants[variant].graph
    return [graph] + [p.format(graph=graph) for p in t.external_data] + list(t.support_files)


# ------------------------------------------------------------------------------------------- environment


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now; huggingface_hub's import-time value otherwise."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")  # the library's rule
    if value is not None:
        return value.strip().upper() in _TRUE
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> Path:
    """The hub cache as the environment says now (same precedence as huggingface_hub.constants)."""
    env = os.environ
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(name):
            return Path(os.path.expandvars(env[name])).expanduser()
    if env.get("HF_HOME"):
        return Path(os.path.expandvars(env["HF_HOME"])).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def hub_endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or None


# ------------------------------------------------------------------------------------------- entry point


def resolve_model(spec: str = DEFAULT_MODEL, variant: str = "fp32", revision: str | None = None) -> ModelFiles:
    """Local files for a model spec: "demo", an .onnx file, a directory, or a hub repo id (org/name)."""
    table = _table().variants
    path = Path(spec).expanduser()
    if variant not in table:  # an onnxruntime-genai variant folder, or nothing
        if path.is_dir():
            _no_revision(spec, revision)
            return _from_genai_dir(spec, path, variant)
        if _REPO_ID_RE.match(spec) and not path.exists():
            return _from_genai_hub(spec, variant, revision)
        raise RvdeployError(f"unknown variant {variant!r}", f"known variants: {', '.join(table)}")
    if spec == "demo":
        return _from_demo(variant, revision)

    if path.is_file():
        _no_revision(spec, revision)
        return _from_file(spec, path, variant)
    if path.is_dir():
        _no_revision(spec, revision)
        return _from_dir(spec, path, variant)
    if spec.startswith((".", "/", "~")) or spec.endswith(".onnx") or path.exists():
        raise RvdeployError(f"model file not found: {spec}")
    if not _REPO_ID_RE.match(spec) or "--" in spec or ".." in spec:
        raise RvdeployError(
            f"model not found: {spec!r} is not a file, a directory or a hub repo id (org/name)",
            f"e.g. {DEFAULT_MODEL}, a path to model.onnx, or demo",
        )
    return _from_hub(spec, variant, revision)


def _no_revision(spec: str, revision: str | None) -> None:
    if revision:
        raise RvdeployError(f"--revision {revision} applies to hub models only, not to the local path {spec}")


def _beside(names: str, *dirs: Path) -> Path | None:
    seen = set()
    for d in dirs:
        if d in seen:
            continue
        seen.add(d)
        p = d / names
        if p.is_file():
            return p
    return None


def _check_external_data(graph: Path, where: str) -> list[str]:
    """External data files the graph references that are not beside it (unreadable or big graphs: [])."""
    try:
        if graph.stat().st_size > _EXTERNAL_CHECK_MAX_BYTES:
            return []
        import onnx

        from rvdeploy.graphinfo import missing_external_data

        model = onnx.load(str(graph), load_external_data=False)
    except Exception:  # unreadable: graphinfo.inspect_graph reports it
        return []
    return missing_external_data(graph, model)


def _raise_missing_data(graph: Path, missing: list[str], hint: str) -> None:
    shown = missing[0] or "(a tensor with no location)"
    more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
    raise RvdeployError(f"{graph} references external data {shown}{more}, which is not beside it", hint)


def _is_plain_file(p: Path) -> bool:
    try:
        return not p.is_symlink() and p.is_file() and p.stat().st_nlink == 1
    except OSError:
        return False


def materialize(onnx_path: Path, dest_dir: Path) -> Path:
    """The graph with its external data as plain files, for readers that refuse linked data files.

    onnx 1.23 (what iree-import-onnx uses to read external data) refuses an external data file that is a
    symbolic link ("... but it is a symbolic link"), that has more than one hard link ("potential hardlink
    attack"), or that resolves outside the graph's directory. A hub cache snapshot is made of symlinks
    to blobs, so a hub model with external data (fp32, fp16) cannot be imported from there as is;
    onnxruntime and graphinfo.inspect_graph read it fine.

    Returns onnx_path itself when all its external data files are already plain files (or it has none).
    Otherwise copies the graph and its data files into dest_dir under the same names and returns the copy
    of the graph; copies of the same size already there are reused.
    """
    import shutil

    import onnx

    from rvdeploy.graphinfo import external_data_locations

    onnx_path = Path(onnx_path)
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:
        raise RvdeployError(f"{onnx_path} is not a readable ONNX model: {_first_line(e)}") from None
    locations = [loc for loc in external_data_locations(model) if loc]
    if all(_is_plain_file(onnx_path.parent / loc) for loc in locations):
        return onnx_path
    dest_dir = Path(dest_dir)
    for rel in [onnx_path.name] + locations:
        src, dst = onnx_path.parent / rel, dest_dir / rel
        if not src.is_file():
            raise RvdeployError(f"{onnx_path} references external data {rel}, which is not beside it")
        if _is_plain_file(dst) and dst.stat().st_size == src.stat().st_size:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".partial")
        try:
            shutil.copyfile(src.resolve(), tmp)
            os.replace(tmp, dst)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise RvdeployError(
                f"cannot copy {src} to {dst}: {_first_line(e)}", "free disk space or pick another build directory"
            ) from None
    return dest_dir / onnx_path.name


# ------------------------------------------------------------------------------------------- demo / local


def _from_demo(variant: str, revision: str | None) -> ModelFiles:
    if variant != "fp32":
        raise RvdeployError(f"the demo model has only the fp32 variant, not {variant}", "drop --variant for demo")
    _no_revision("demo", revision)
    graph = DEMO_DIR / "model.onnx"
    if not graph.is_file():
        raise RvdeployError(
            f"demo model missing: {graph}", "reinstall rvdeploy; in a checkout, run scripts/make_demo_model.py"
        )
    return ModelFiles(
        onnx=graph,
        tokenizer=_beside("tokenizer.json", DEMO_DIR),
        config=_beside("config.json", DEMO_DIR),
        model_id="demo",
        revision=None,
        variant="fp32",
        kind="demo",
    )


def _from_file(spec: str, path: Path, variant: str) -> ModelFiles:
    if path.suffix != ".onnx":
        raise RvdeployError(f"{spec} is not an .onnx file", "pass the graph file (.onnx), a directory or a hub repo id")
    # The file name tells the variant when it is one of the table's names (model_fp16.onnx -> fp16).
    by_name = {v.filename: v.name for v in _table().variants.values()}
    variant = by_name.get(path.name, variant)
    missing = _check_external_data(path, spec)
    if missing:
        _raise_missing_data(path, missing, "copy the .onnx file together with its data files")
    return ModelFiles(
        onnx=path,
        tokenizer=_beside("tokenizer.json", path.parent, path.parent.parent),
        config=_beside("config.json", path.parent, path.parent.parent),
        model_id=spec,
        revision=None,
        variant=variant,
        kind="file",
    )


def _variants_in(root: Path) -> list[str]:
    """Table variants whose graph is in root, hub layout (onnx/...) or flat."""
    return [v.name for v in _table().variants.values() if (root / v.graph).is_file() or (root / v.filename).is_file()]


def _from_dir(spec: str, root: Path, variant: str) -> ModelFiles:
    v = _table().variants[variant]
    graph = next((p for p in (root / v.graph, root / v.filename) if p.is_file()), None)
    if graph is None:
        present = _variants_in(root)
        others = sorted(
            str(p.relative_to(root))
            for p in list(root.glob("*.onnx")) + list(root.glob("onnx/*.onnx"))
            if p.name not in {t.filename for t in _table().variants.values()}
        )
        hint = f"variants present: {', '.join(present)}" if present else "no variant graphs in it"
        if others:
            hint += f"; other graphs: {', '.join(others[:5])} (pass the .onnx file itself)"
        raise RvdeployError(f"no {variant} graph in {spec}: looked for {v.graph} and {v.filename}", hint)
    missing = _check_external_data(graph, spec)
    if missing:
        _raise_missing_data(graph, missing, "copy the .onnx file together with its data files")
    return ModelFiles(
        onnx=graph,
        tokenizer=_beside("tokenizer.json", root, graph.parent, graph.parent.parent),
        config=_beside("config.json", root, graph.parent, graph.parent.parent),
        model_id=spec,
        revision=None,
        variant=variant,
        kind="dir",
    )


# ------------------------------------------------------------------------------------------- hub


def _first_line(e: BaseException | None) -> str:
    if e is None:
        return ""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _repo_storage(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def _cached_revisions(storage: Path) -> str:
    refs = storage / "refs"
    parts = []
    if refs.is_dir():
        for ref in sorted(p for p in refs.rglob("*") if p.is_file()):
            try:
                parts.append(f"{ref.relative_to(refs).as_posix()} -> {ref.read_text().strip()[:7]}")
            except OSError:
                pass
    snaps = storage / "snapshots"
    if snaps.is_dir():
        named = {p.split(" -> ")[1] for p in parts}
        parts += sorted(s.name[:7] for s in snaps.iterdir() if s.name[:7] not in named)
    return ", ".join(parts) or "nothing"


def _not_cached(repo_id: str, revision: str | None, cache: Path, offline: bool, err: BaseException) -> RvdeployError:
    storage = _repo_storage(cache, repo_id)
    if offline:
        why = "HF_HUB_OFFLINE is set"
        hint = (
            "unset HF_HUB_OFFLINE with network access to download it,"
            " or point HF_HUB_CACHE/HF_HOME at a cache that has it"
        )
    else:
        cause = err.__cause__ or err.__context__
        why = "the hub could not be reached" + (f" ({type(cause).__name__})" if cause else "")
        hint = (
            "check the network, proxy or HF_ENDPOINT;"
            " or point HF_HUB_CACHE/HF_HOME at a cache that has it and set HF_HUB_OFFLINE=1"
        )
    if not (storage / "snapshots").is_dir():
        return RvdeployError(f"hub repo {repo_id} is not in the local cache at {cache} and {why}", hint)
    return RvdeployError(
        f"revision {revision or 'main'} of hub repo {repo_id} is not in the local cache at {cache} and {why}"
        f"; cached revisions: {_cached_revisions(storage)}",
        hint,
    )


@contextmanager
def _hub_errors(repo_id: str, revision: str | None, cache: Path, offline: bool) -> Iterator[None]:
    """Maps huggingface_hub's exceptions to one-line RvdeployErrors."""
    from huggingface_hub.errors import (
        DisabledRepoError,
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    login = "set HF_TOKEN or run `hf auth login`"
    try:
        yield
    except RvdeployError:
        raise
    except GatedRepoError:
        raise RvdeployError(
            f"hub repo {repo_id} is gated and this machine has no access to it",
            f"accept its terms on the repo page, then {login}",
        ) from None
    except RepositoryNotFoundError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            raise RvdeployError(
                f"hub repo {repo_id} not found, or private and not accessible (HTTP 401)",
                f"check the repo id; for a private repo {login}",
            ) from None
        raise RvdeployError(f"hub repo {repo_id} not found", "check the repo id (org/name)") from None
    except RevisionNotFoundError:
        raise RvdeployError(
            f"revision {revision or 'main'} not found in hub repo {repo_id}",
            "use a branch, tag or commit sha of the repo",
        ) from None
    except DisabledRepoError:
        raise RvdeployError(f"hub repo {repo_id} is disabled on the hub") from None
    except LocalEntryNotFoundError as e:
        raise _not_cached(repo_id, revision, cache, offline, e) from None
    except EntryNotFoundError as e:
        raise RvdeployError(f"hub repo {repo_id}: file not found: {_first_line(e)}") from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise RvdeployError(
                f"hub refused access to {repo_id} (HTTP {status}): the token is missing, invalid or lacks access",
                login,
            ) from None
        raise RvdeployError(f"hub request for {repo_id} failed: {_first_line(e)}") from None
    except HFValidationError as e:
        raise RvdeployError(f"{repo_id!r} is not a valid hub repo id: {_first_line(e)}") from None
    except OSError as e:  # requests' SSL/proxy/connection errors, disk errors
        raise RvdeployError(
            f"cannot fetch hub repo {repo_id} ({type(e).__name__}: {_first_line(e)})",
            f"check the network or proxy, or set HF_HUB_OFFLINE=1 to use the local cache at {cache}",
        ) from None
    except Exception as e:
        # httpx (huggingface_hub 1.x) errors are not OSErrors.
        if type(e).__module__.split(".")[0] in ("httpx", "httpcore", "requests", "urllib3"):
            raise RvdeployError(
                f"cannot reach the hub for {repo_id} ({type(e).__name__}: {_first_line(e)})",
                f"check the network or proxy, or set HF_HUB_OFFLINE=1 to use the local cache at {cache}",
            ) from None
        raise


def _expand_short_sha(cache: Path, repo_id: str, revision: str) -> str:
    """Offline, a unique prefix of a cached snapshot's commit stands for that commit."""
    snaps = _repo_storage(cache, repo_id) / "snapshots"
    if not _SHORT_SHA_RE.match(revision) or not snaps.is_dir():
        return revision
    hits = [s.name for s in snaps.iterdir() if s.name.startswith(revision)]
    return hits[0] if len(hits) == 1 else revision


def _from_hub(repo_id: str, variant: str, revision: str | None) -> ModelFiles:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    v = _table().variants[variant]
    cache = hub_cache_dir()
    offline = hub_offline()
    endpoint = hub_endpoint()
    rev = _expand_short_sha(cache, repo_id, revision) if (offline and revision) else revision

    with _hub_errors(repo_id, revision, cache, offline):
        folder = snapshot_download(
            repo_id,
            revision=rev,
            cache_dir=cache,
            allow_patterns=hub_patterns(variant),
            local_files_only=offline,
            endpoint=endpoint,
        )
    snapshot = Path(folder)
    commit = snapshot.name
    at = f"{repo_id}@{commit[:7]}"
    graph = snapshot / v.graph

    if not graph.is_file():
        present: list[str] | None = None
        if not offline:
            try:
                with _hub_errors(repo_id, revision, cache, offline):
                    files = set(HfApi(endpoint=endpoint).list_repo_files(repo_id, revision=commit))
                present = [t.name for t in _table().variants.values() if t.graph in files]
            except RvdeployError:
                present = None
        if present is not None:
            raise RvdeployError(
                f"hub repo {at} has no {v.graph} (variant {variant})",
                f"variants present: {', '.join(present) or 'none (not an onnx-community layout)'}",
            )
        cached = _variants_in(snapshot)
        raise RvdeployError(
            f"variant {variant} ({v.graph}) of {at} is not in the local cache at {cache}",
            f"variants cached: {', '.join(cached) or 'none'}"
            + ("; unset HF_HUB_OFFLINE with network access to download it" if offline else ""),
        )

    missing = _check_external_data(graph, repo_id)
    if missing and not offline:
        # The graph names data files the patterns did not cover: fetch exactly those.
        graph_dir = PurePosixPath(v.graph).parent
        try:
            with _hub_errors(repo_id, revision, cache, offline):
                for loc in missing:
                    if loc:
                        hf_hub_download(
                            repo_id, (graph_dir / loc).as_posix(), revision=commit, cache_dir=cache, endpoint=endpoint
                        )
        except RvdeployError:
            pass  # reported below as missing from the cache
        missing = _check_external_data(graph, repo_id)
    if missing:
        shown = missing[0] or "(a tensor with no location)"
        raise RvdeployError(
            f"{at}: {v.graph} references external data {shown}, which is not in the local cache at {cache}",
            "unset HF_HUB_OFFLINE with network access to download it" if offline else "the repo lacks that file",
        )

    return ModelFiles(
        onnx=graph,
        tokenizer=_beside("tokenizer.json", snapshot),
        config=_beside("config.json", snapshot),
        model_id=repo_id,
        revision=commit,
        variant=variant,
        kind="hub",
    )


# ------------------------------------------------------------------------------------------- genai variant folders


def _unknown_variant(variant: str, found: dict[str, str]) -> RvdeployError:
    known = ", ".join(_table().variants)
    hint = f"known variants: {known}" + (f"; onnxruntime-genai folders: {', '.join(found)}" if found else "")
    return RvdeployError(f"unknown variant {variant!r}", hint)


def _genai_files(spec: str, root: Path, folder: str, variant: str, revision: str | None, kind: str) -> ModelFiles:
    d = root / folder
    graph = d / genai_variants.graph_name(d)
    if not graph.is_file():
        raise RvdeployError(
            f"{spec}: variant folder {folder} has no {graph.name}",
            "the folder's genai_config.json names a graph that is not there",
        )
    missing = _check_external_data(graph, spec)
    if missing:
        _raise_missing_data(graph, missing, "copy the variant folder together with its data files")
    return ModelFiles(
        onnx=graph,
        tokenizer=_beside("tokenizer.json", d, root),
        config=_beside("config.json", d, root),
        model_id=spec,
        revision=revision,
        variant=variant,
        kind=kind,
    )


def _from_genai_dir(spec: str, root: Path, variant: str) -> ModelFiles:
    found = genai_variants.folders(genai_variants.local_paths(root))
    folder = genai_variants.match(variant, found)
    if folder is None:
        raise _unknown_variant(variant, found)
    return _genai_files(spec, root, folder, variant, None, "dir")


def _hub_genai_folders(repo_id: str, revision: str | None) -> tuple[Path, dict[str, str]]:
    """(snapshot directory, variant folders) of a hub repo: online from the repo's file list, offline from the
    genai_config.json files in the cached snapshot."""
    from huggingface_hub import HfApi, snapshot_download

    cache, offline, endpoint = hub_cache_dir(), hub_offline(), hub_endpoint()
    rev = _expand_short_sha(cache, repo_id, revision) if (offline and revision) else revision
    with _hub_errors(repo_id, revision, cache, offline):
        snapshot = Path(
            snapshot_download(
                repo_id,
                revision=rev,
                cache_dir=cache,
                local_files_only=offline,
                endpoint=endpoint,
                allow_patterns=[f"**/{genai_variants.CONFIG}"],
            )
        )
        if offline:
            paths = genai_variants.local_paths(snapshot)
        else:
            paths = HfApi(endpoint=endpoint).list_repo_files(repo_id, revision=snapshot.name)
    return snapshot, genai_variants.folders(paths)


def _from_genai_hub(repo_id: str, variant: str, revision: str | None) -> ModelFiles:
    from huggingface_hub import snapshot_download

    try:
        snapshot, found = _hub_genai_folders(repo_id, revision)
    except RvdeployError as e:  # no repo to look for variant folders in: the name is not a table variant either
        raise RvdeployError(
            f"unknown variant {variant!r}",
            f"known variants: {', '.join(_table().variants)}; onnxruntime-genai folders: none found ({e})",
        ) from None
    folder = genai_variants.match(variant, found)
    if folder is None:
        raise _unknown_variant(variant, found)
    cache, offline = hub_cache_dir(), hub_offline()
    if not offline:
        with _hub_errors(repo_id, revision, cache, offline):
            snapshot_download(
                repo_id,
                revision=snapshot.name,
                cache_dir=cache,
                endpoint=hub_endpoint(),
                allow_patterns=[f"{folder}/*"] + list(_table().support_files),
            )
    graph_dir = snapshot / folder
    if not (graph_dir / genai_variants.graph_name(graph_dir)).is_file():
        raise RvdeployError(
            f"variant {variant} ({folder}) of {repo_id}@{snapshot.name[:7]} is not in the local cache at {cache}",
            "unset HF_HUB_OFFLINE with network access to download it",
        )
    return _genai_files(repo_id, snapshot, folder, variant, snapshot.name, "hub")


def list_variants(spec: str, revision: str | None = None) -> list[str]:
    """The variants a model offers: variants.toml's graphs present, then onnxruntime-genai folders. Hub repos are
    read from the hub, or offline from the local cache (what is cached)."""
    path = Path(spec).expanduser()
    if spec == "demo":
        return ["fp32"]
    if path.is_file():
        return [_from_file(spec, path, "fp32").variant]
    if path.is_dir():
        return _variants_in(path) + list(genai_variants.folders(genai_variants.local_paths(path)))
    if not _REPO_ID_RE.match(spec):
        raise RvdeployError(f"model not found: {spec!r} is not a file, a directory or a hub repo id (org/name)")
    snapshot, found = _hub_genai_folders(spec, revision)
    if hub_offline():
        table = _variants_in(snapshot)
    else:
        from huggingface_hub import HfApi

        with _hub_errors(spec, revision, hub_cache_dir(), False):
            files = set(HfApi(endpoint=hub_endpoint()).list_repo_files(spec, revision=snapshot.name))
        table = [t.name for t in _table().variants.values() if t.graph in files]
    return table + list(found)
