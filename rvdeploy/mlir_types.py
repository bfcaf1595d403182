"""Small helpers between torch-dialect value types and builtin tensor types (as MLIR text)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_VT = re.compile(r"!torch\.vtensor<\[([^\]]*)\],(\w+)>")
# torch's signed integer spellings; floats and i1 are spelled alike.
_BUILTIN_ELT = {"si64": "i64", "si32": "i32", "si8": "i8", "ui8": "i8"}


@dataclass(frozen=True)
class TensorType:
    dims: tuple[int, ...]  # -1 for a dynamic dim
    torch_elt: str  # as the torch dialect spells it: f32, f16, si64, i1

    @classmethod
    def parse(cls, text: str) -> "TensorType":
        m = _VT.fullmatch(str(text).strip())
        if not m:
            raise ValueError(f"not a !torch.vtensor type: {text}")
        dims = tuple(-1 if d.strip() == "?" else int(d) for d in m.group(1).split(",")) if m.group(1) else ()
        return cls(dims, m.group(2))

    @property
    def elt(self) -> str:
        return _BUILTIN_ELT.get(self.torch_elt, self.torch_elt)

    def with_dims(self, dims) -> "TensorType":
        return TensorType(tuple(dims), self.torch_elt)

    @property
    def builtin(self) -> str:
        return builtin(self.dims, self.elt)

    @property
    def vtensor(self) -> str:
        return "!torch.vtensor<[" + ",".join("?" if d < 0 else str(d) for d in self.dims) + f"],{self.torch_elt}>"


def builtin(dims, elt: str) -> str:
    shape = "".join(("?" if d < 0 else str(d)) + "x" for d in dims)
    return f"tensor<{shape}{elt}>"
