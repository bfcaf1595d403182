"""Where the package's data directories live, in a wheel and in a source checkout."""

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """`targets` etc.: rvdeploy/_data/NAME in a wheel, NAME at the repository root in a checkout."""
    for candidate in (_PKG / "_data" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"rvdeploy data directory {name!r} not found (broken install?)")
