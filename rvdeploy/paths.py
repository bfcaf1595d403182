"""Per-user directories (XDG base directories), each overridable for tests and CI.

config: registered runtimes. cache: the cross-compiled probe and the emulated board's userland (rebuilt on
demand, safe to delete). state: running emulated boards (keys, sshd config, pid).
"""

from __future__ import annotations

import os
from pathlib import Path


def _xdg(var: str, default: str, override: str) -> Path:
    if os.environ.get(override):
        return Path(os.environ[override]).absolute()
    base = os.environ.get(var) or str(Path.home() / default)
    return (Path(base) / "rvdeploy").absolute()  # tools run with other working directories


def config_dir() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config", "RVDEPLOY_CONFIG_DIR")


def cache_dir() -> Path:
    return _xdg("XDG_CACHE_HOME", ".cache", "RVDEPLOY_CACHE_DIR")


def state_dir() -> Path:
    return _xdg("XDG_STATE_HOME", ".local/state", "RVDEPLOY_STATE_DIR")
