"""The deployable bundle: its file names (names), its manifest as typed values (manifest) checked against one
schema (schema, manifest_schema.toml), and the directory and .tar.gz forms written, opened, verified and
packed (store)."""

from .manifest import Manifest
from .names import MANIFEST, SUMS
from .store import Bundle, pack_bundle, sha256_file, unpack_bundle, write_bundle

__all__ = ["Bundle", "Manifest", "MANIFEST", "SUMS", "pack_bundle", "sha256_file", "unpack_bundle", "write_bundle"]
