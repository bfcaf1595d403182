"""rvdeploy inspect: what a bundle contains and where each contraction runs."""

from __future__ import annotations

import typer

from .. import api
from ._options import BundleArg, Json
from ._output import out, print_json, print_table


def inspect(bundle: BundleArg, json_: Json = False) -> None:
    """Show the manifest and one row per contraction dispatch: op, shapes, mmt4d microkernel tile, padding."""
    info = api.inspect(bundle)
    m = info["manifest"]
    if json_:
        print_json(info | {"manifest": m.to_dict()})
        return
    q = m.model.quantized.format if m.model.quantized else None
    variant = m.model.variant + (f", quantized {q} by rvdeploy" if q else "")
    out.print(
        f"{bundle}: {m.model.id} ({variant}) for {m.target.name}, pipeline {m.pipeline.name}, IREE {m.compiler.version}"
    )
    rows = [
        (
            r["entry"],
            r["op"],
            r["shapes"],
            r["types"],
            "yes" if r["mmt4d"] else "no",
            r["tile"] or "-" if r["ukernel"] else "codegen",
            (r.get("library") or "-") if r["ukernel"] else "-",
            _pct(r.get("padding")),
        )
        for r in info["dispatches"]["contractions"]
    ]
    rows += _q4_kernel_rows(m)
    print_table("contractions", ["entry", "op", "shapes", "types", "mmt4d", "ukernel tile", "library", "padding"], rows)
    packs = [(p["entry"], p["op"], p["operand"], p["source_shape"], p["bytes"]) for p in info["dispatches"]["packs"]]
    if packs:
        print_table("pack / unpack", ["entry", "op", "operand", "shape", "bytes"], packs)
    out.print_json(data=info["summary"])


def _q4_kernel_rows(m) -> list[tuple]:
    """The 4-bit contractions on the RVV 4-bit kernels (rvdeploy.q4kernel): dispatches into linked code that the
    compiler's dumps show only as a call, so they are listed from the manifest's packed weights (4-bit panels)."""
    mm = m.pipeline.mmt4d
    if not mm or not mm.q4_kernel_contractions:
        return []
    rows = []
    for pw in mm.packed_weights:
        if ".q4p" in pw.key:
            n0 = pw.packed_shape[-1]
            padding = pw.packed_shape[0] * n0 / pw.n - 1
            shapes = f"?x{pw.k} * {pw.k}x{pw.n} -> ?x{pw.n}"
            rows.append(
                ("prefill+decode", "rvd_q4_matmul", shapes, "i8*i4->f32", "no", f"panel {n0}", "project", _pct(padding))
            )
    return rows


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
