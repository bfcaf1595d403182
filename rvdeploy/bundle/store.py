"""The deployable bundle: a directory with the module, its weights, the tokenizer and a manifest.

Written into a temporary sibling directory and renamed into place, so an interrupted build never
leaves a half-written bundle under the requested name; an existing output is replaced only as
rvdeploy.bundle.outputs allows. Same inputs give the same bytes: the manifest has no timestamps and its keys are
sorted, and the .tar.gz form (pack_bundle) has sorted entries with fixed modes, owners and times. SHA256SUMS
repeats the manifest's hashes in `sha256sum -c` format for the board-side launcher, which has no JSON parser.
Every reader opens a bundle through Bundle.open, which checks the manifest (rvdeploy.bundle.schema) first and
reads it into a typed Manifest (rvdeploy.bundle.manifest).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import zlib
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import dir_into_place, file_into_place
from ..errors import RvdeployError
from . import outputs
from .manifest import FileEntry, Manifest, checked, parse
from .names import MANIFEST, SUMS

MAX_MANIFEST_BYTES = 16 << 20  # a real manifest is a few KB; more is not one (and is not read into memory)
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _open_inside(root: Path, name: str, shown: str):
    """Open the bundle file NAME (a checked relative path) for reading, refusing a link anywhere on the way:
    a manifest that names only paths inside the bundle must not read through a link to outside it."""
    p = root
    for part in Path(name).parts[:-1]:
        p = p / part
        if p.is_symlink() or not p.is_dir():
            raise RvdeployError(f"{shown}: {name} is missing ({p.name}/ is not a directory in the bundle)")
    try:
        fd = os.open(root / name, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise RvdeployError(f"{shown}: {name} is missing") from None
    except OSError as exc:  # ELOOP: a symbolic link
        why = "a symbolic link" if os.path.islink(root / name) else exc.strerror
        raise RvdeployError(
            f"{shown}: {name} cannot be read ({why})",
            hint="a bundle holds regular files only: rebuild or copy it again",
        ) from None
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise RvdeployError(f"{shown}: {name} is not a regular file")
    return f


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    label: str = ""  # how messages name the bundle (an archive being unpacked), default its path
    raw: bytes = field(default=b"", repr=False, compare=False)  # manifest.json as read: packed byte for byte

    @property
    def shown(self) -> str:
        return self.label or str(self.path)

    @classmethod
    def open(cls, path: Path | str, label: str = "") -> "Bundle":
        path = Path(path)
        shown = label or str(path)
        mf = path / MANIFEST
        if not path.is_dir():
            raise RvdeployError(f"bundle not found: {path}", hint="build one with `rvdeploy build -o DIR`")
        if not mf.is_file() or mf.is_symlink():
            raise RvdeployError(f"{shown} is not an rvdeploy bundle: no {MANIFEST}")
        if mf.stat().st_size > MAX_MANIFEST_BYTES:
            raise RvdeployError(f"{shown}/{MANIFEST} is {mf.stat().st_size} bytes: not an rvdeploy manifest")
        raw = mf.read_bytes()
        return cls(path, parse(raw, f"{shown}/{MANIFEST}"), label, raw)

    def file(self, name: str) -> Path:
        if not self.manifest.lists(name):
            raise RvdeployError(f"{self.shown}: manifest lists no file {name!r}")
        return self.path / name

    def read_text(self, name: str) -> str:
        """A listed text file's contents (read without following links)."""
        self.file(name)
        with _open_inside(self.path, name, self.shown) as f:
            data = f.read()
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise RvdeployError(f"{self.shown}: {name} is not UTF-8 text") from None

    def _mismatch(self, name: str) -> RvdeployError:
        return RvdeployError(
            f"{self.shown}: {name} does not match its sha256 in the manifest",
            hint="the bundle was altered or damaged: rebuild or copy it again",
        )

    def reader(self, entry: FileEntry) -> "_Checked":
        """A listed file open for reading, its size and sha256 checked as it is read (`check()` at the end)."""
        return _Checked(self, entry)

    def verify(self) -> None:
        """Every file present, a regular file inside the bundle, with the recorded size and sha256; and
        SHA256SUMS saying the same (the board-side launcher checks that file)."""
        for entry in self.manifest.files:
            with self.reader(entry) as f:
                while f.read(_CHUNK):
                    pass
                f.check()
        self.check_sums()

    def check_sums(self) -> None:
        sums = self.path / SUMS
        if (
            not sums.is_file()
            or sums.is_symlink()
            or sums.stat().st_size > MAX_MANIFEST_BYTES
            or sums.read_bytes() != _sums(self.manifest.files).encode()
        ):
            raise RvdeployError(
                f"{self.shown}: {SUMS} is missing or does not match the manifest",
                hint="the bundle was altered or damaged: rebuild or copy it again",
            )


class _Checked:
    """One bundle file being read (no link followed), hashed on the way: one pass checks it and, in pack,
    copies it."""

    def __init__(self, bundle: Bundle, entry: FileEntry):
        self.bundle, self.entry = bundle, entry
        self._f = _open_inside(bundle.path, entry.path, bundle.shown)
        self._h, self._n = hashlib.sha256(), 0
        if os.fstat(self._f.fileno()).st_size != entry.size:
            self._f.close()
            raise bundle._mismatch(entry.path)

    def read(self, n: int = -1) -> bytes:
        chunk = self._f.read(n)
        self._h.update(chunk)
        self._n += len(chunk)
        return chunk

    def check(self) -> None:
        if self._n != self.entry.size or self._h.hexdigest() != self.entry.sha256:
            raise self.bundle._mismatch(self.entry.path)

    def __enter__(self) -> "_Checked":
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def _sums(entries) -> str:
    return "".join(f"{e.sha256}  {e.path}\n" for e in entries)


def write_bundle(
    out: Path,
    files: dict[str, Path],
    manifest: Manifest,
    force: bool = False,
    executables: frozenset[str] | set[str] = frozenset(),
    archive: Path | None = None,
) -> Bundle:
    """Copy `files` (bundle name -> source path) and write the manifest and SHA256SUMS, atomically.
    Names in `executables` get mode 0755 (recorded in the manifest), every other file 0644. With `archive`,
    also its .tar.gz, packed from the finished directory before either is renamed into place (the bundle
    first: an archive never stands beside a bundle that failed)."""
    out = outputs.directory(out, force)
    if archive is not None:
        archive = outputs.file(archive, force, outputs.ARCHIVE, flag="--tar")
    with ExitStack() as later:
        archive_tmp = later.enter_context(file_into_place(archive)) if archive is not None else None
        with dir_into_place(out, lambda o: outputs.check_directory(o, force)) as staging:
            _fill(staging, files, manifest, executables, out)
            if archive_tmp is not None:
                _write_archive(Bundle.open(staging, label=str(out)), archive_tmp)
    return Bundle.open(out)


def _fill(staging: Path, files: dict[str, Path], manifest: Manifest, executables, out: Path) -> None:
    """The bundle's files (copied), its manifest (checked against the schema: a failure is rvdeploy's bug) and
    SHA256SUMS, into STAGING."""
    entries = []
    for name in sorted(files):
        dst = staging / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files[name], dst)
        os.chmod(dst, 0o755 if name in executables else 0o644)
        entries.append(FileEntry(name, dst.stat().st_size, sha256_file(dst), name in executables))
    manifest = checked(manifest.with_files(entries), f"the manifest for {out}")  # a bug if it fails
    (staging / MANIFEST).write_text(manifest.to_json())
    (staging / SUMS).write_text(_sums(entries))


# ---- .tar.gz form -------------------------------------------------------------------------------------


def _write_archive(bundle: Bundle, tmp: Path) -> None:
    """The bundle as a .tar.gz at TMP, byte-identical for identical bundles: sorted entries, no directory
    entries, mode 0644/0755, uid/gid 0, no user names, mtime 0, and a gzip header without name or time. Each
    file is streamed and checked against the manifest as it is read (a bundle file is never held in memory)."""
    m = bundle.manifest
    entries = {f.path: f for f in m.files}
    inline = {MANIFEST: bundle.raw, SUMS: _sums(m.files).encode()}
    with (
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for name in sorted([*inline, *entries]):
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o755 if name in entries and entries[name].executable else 0o644
            if name in inline:
                info.size = len(inline[name])
                tar.addfile(info, io.BytesIO(inline[name]))
                continue
            info.size = entries[name].size
            with bundle.reader(entries[name]) as f:
                tar.addfile(info, f)
                f.check()


def pack_bundle(bundle_path: Path | str, out: Path | str, force: bool = False) -> Path:
    """Write the bundle as a .tar.gz (see _write_archive); an existing OUT only with FORCE, and only an
    archive rvdeploy packed. Every file is checked against the manifest as it is packed."""
    bundle = Bundle.open(bundle_path)
    bundle.check_sums()
    out = outputs.file(out, force, outputs.ARCHIVE)
    with file_into_place(out) as tmp:
        _write_archive(bundle, tmp)
    return out


def _member_name(tar_path: Path, m: tarfile.TarInfo) -> str:
    """The member's path inside the bundle ('' for the bundle directory itself), after refusing what could
    write outside it: absolute paths, '..', links, devices."""
    name = m.name
    parts = name.split("/")
    if name.startswith("/"):
        raise RvdeployError(f"{tar_path}: entry {name!r} has an absolute path; refusing to unpack")
    if ".." in parts:
        raise RvdeployError(f"{tar_path}: entry {name!r} points outside the bundle ('..'); refusing to unpack")
    if m.issym() or m.islnk():
        # bundles never contain links; a link is how an archive writes outside its directory
        raise RvdeployError(f"{tar_path}: entry {name!r} is a link to {m.linkname!r}; refusing to unpack")
    if not (m.isfile() or m.isdir()):
        raise RvdeployError(f"{tar_path}: entry {name!r} is not a regular file; refusing to unpack")
    return "/".join(p for p in parts if p not in ("", "."))  # './manifest.json' as `tar -C DIR .` writes it


def _read_member(tar: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(m)
    return f.read() if f is not None else b""


def unpack_bundle(tar_path: Path | str, out: Path | str, force: bool = False) -> Bundle:
    """Unpack a bundle .tar.gz into `out`: every entry checked first (no absolute paths, no '..', no links,
    no devices), the manifest checked, then only the files it lists (each once, of its listed size) and
    SHA256SUMS are written, and each is verified against the manifest. Atomic like write_bundle."""
    tar_path = Path(tar_path)
    if not tar_path.is_file():
        raise RvdeployError(f"bundle archive not found: {tar_path}")
    out = outputs.directory(out, force)
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            members = tar.getmembers()
            names = [_member_name(tar_path, m) for m in members]
            found = [m for m, n in zip(members, names) if n == MANIFEST and m.isfile()]
            if not found:
                raise RvdeployError(f"{tar_path} is not an rvdeploy bundle archive: no {MANIFEST}")
            if found[-1].size > MAX_MANIFEST_BYTES:
                raise RvdeployError(f"{tar_path}: {MANIFEST} is {found[-1].size} bytes: not an rvdeploy manifest")
            manifest = parse(_read_member(tar, found[-1]), f"{tar_path}: {MANIFEST}")
            sizes = {f.path: f.size for f in manifest.files}
            sizes[MANIFEST] = found[-1].size
            sizes[SUMS] = len(_sums(manifest.files))
            dirs = {p.as_posix() for n in sizes for p in Path(n).parents} | {""}
            with dir_into_place(out, lambda o: outputs.check_directory(o, force)) as staging:
                written = set()
                for m, name in zip(members, names):
                    if m.isdir():
                        if name not in dirs:
                            raise RvdeployError(
                                f"{tar_path}: entry {m.name!r} is a directory the manifest does "
                                "not list; refusing to unpack"
                            )
                        continue
                    if name not in sizes:
                        raise RvdeployError(
                            f"{tar_path}: entry {m.name!r} is not a file the manifest lists; refusing to unpack"
                        )
                    if name in written:
                        raise RvdeployError(f"{tar_path}: entry {name!r} appears twice; refusing to unpack")
                    if m.size != sizes[name]:
                        raise RvdeployError(
                            f"{tar_path}: entry {name!r} is {m.size} bytes, the manifest says "
                            f"{sizes[name]}; refusing to unpack"
                        )
                    written.add(name)
                    dst = staging / name
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(m) as src, open(dst, "wb") as f:
                        shutil.copyfileobj(src, f)
                    os.chmod(dst, 0o755 if m.mode & 0o111 else 0o644)
                Bundle.open(staging, label=str(tar_path)).verify()
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise RvdeployError(f"{tar_path}: not a readable .tar.gz ({exc})") from None
    return Bundle.open(out)
