"""Writing MLIR function bodies as text: fresh SSA names, torch <-> builtin conversions, calls (the entry
points of rvdeploy.entrypoints and rvdeploy.kvstate)."""

from __future__ import annotations

from .mlir_types import TensorType, builtin


class Emitter:
    """Writes SSA lines with fresh value names."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._n = 0

    def fresh(self, stem: str) -> str:
        self._n += 1
        return f"%{stem}_{self._n}"

    def op(self, stem: str, text: str) -> str:
        name = self.fresh(stem)
        self.lines.append(f"    {name} = {text}")
        return name

    def raw(self, text: str) -> None:
        self.lines.append(f"    {text}")

    def cast(self, value: str, src: str, dst: str) -> str:
        return value if src == dst else self.op("c", f"tensor.cast {value} : {src} to {dst}")

    def to_torch(self, value: str, src: str, arg: TensorType) -> str:
        value = self.cast(value, src, arg.builtin)
        return self.op("v", f"torch_c.from_builtin_tensor {value} : {arg.builtin} -> {arg.vtensor}")

    def from_torch(self, value: str, res: TensorType, dst: str) -> str:
        b = self.op("b", f"torch_c.to_builtin_tensor {value} : {res.vtensor} -> {res.builtin}")
        return self.cast(b, res.builtin, dst)

    def ones(self, length: str) -> str:
        one = self.op("one", "arith.constant 1 : i64")
        e = self.op("e", f"tensor.empty({length}) : tensor<1x?xi64>")
        return self.op("ones", f"linalg.fill ins({one} : i64) outs({e} : tensor<1x?xi64>) -> tensor<1x?xi64>")

    def iota(self, length: str) -> str:
        e = self.op("e", f"tensor.empty({length}) : tensor<1x?xi64>")
        name = self.fresh("iota")
        self.lines += [
            f"    {name} = linalg.generic {{indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>], "
            f'iterator_types = ["parallel", "parallel"]}} outs({e} : tensor<1x?xi64>) {{',
            "    ^bb0(%out: i64):",
            "      %j = linalg.index 1 : index",
            "      %jv = arith.index_cast %j : index to i64",
            "      linalg.yield %jv : i64",
            "    } -> tensor<1x?xi64>",
        ]
        return name


def first_prefill_args(em: Emitter, names_in: list[str], sig, ids: str, length: str) -> list[str]:
    """The exported prefill graph's arguments for the first `length` tokens `ids` (tensor<1x?xi64>): mask of
    ones, positions 0.., and an empty past (batch 1, length 0) for every cache input."""
    args = []
    for i, name in enumerate(names_in):
        t = sig.inputs[i]
        if name == "input_ids":
            args.append(em.to_torch(ids, "tensor<1x?xi64>", t))
        elif name == "attention_mask":
            args.append(em.to_torch(em.ones(length), "tensor<1x?xi64>", t))
        elif name == "position_ids":
            args.append(em.to_torch(em.iota(length), "tensor<1x?xi64>", t))
        else:  # empty past: batch 1, length 0
            dims = (1,) + t.dims[1:2] + (0,) + t.dims[3:]
            e = em.op("kv", f"tensor.empty() : {builtin(dims, t.elt)}")
            args.append(em.to_torch(e, builtin(dims, t.elt), t))
    return args


def call(em: Emitter, callee: str, sig, args: list[str]) -> list[str]:
    """`sig`: the callee's signature (.inputs, .results: TensorType lists); returns the result names."""
    outs = em.fresh("r")
    types_in = ", ".join(t.vtensor for t in sig.inputs)
    types_out = ", ".join(t.vtensor for t in sig.results)
    em.raw(f"{outs}:{len(sig.results)} = func.call @{callee}({', '.join(args)}) : ({types_in}) -> ({types_out})")
    return [f"{outs}#{i}" for i in range(len(sig.results))]
