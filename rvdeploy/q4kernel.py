"""The 4-bit matmul kernels (ukernels/rvd_q4.c) as external functions of a q4 module's dispatches.

On riscv64 RVV targets each 4-bit weight contraction (MatMulNBits with blocks of 32 and zero point 8, f32
activations) runs as two dispatches into hand-written code instead of a generated dequantizing contraction:
  rvd_q8_quantize  the activations to int8 per block of 32, with the block's scale and sum (shared by the
                   contractions reading the same activations: q/k/v, gate/up);
  rvd_q4_matmul    one workgroup per panel of N0 = VLEN/4 output columns, integer multiply-accumulate on the
                   packed nibbles, one f16 weight scale and one activation scale per block (llama.cpp's
                   Q4_0 x Q8_0 arithmetic).
IREE 3.13 takes such code as a `stream.executable` whose functions call external symbols, with the object
file attached as `hal.executable.objects` (keyed by the generic riscv64 target, so it is linked into whatever
exact target the flags make) and `flow.dispatch` calls to its exports; the object is linked into the
module's embedded ELF (no PLT there: the symbols are hidden). The object is compiled per VLEN by clang-19
and cached by content like the mmt4d bitcode (rvdeploy.ukernels).
"""

from __future__ import annotations

from pathlib import Path

from . import ccache
from .layout import packed_shape, tensor_type
from .targets import Target
from .ukernels import _CLANGS, _find, source_dir

BLOCK = 32  # K values per block: one f16 weight scale and one activation scale each
EXECUTABLE = "rvd_q4_kernels"
SOURCES = ("rvd_q4.c", "rvd_q4.h")


def applies(target: Target) -> bool:
    return not target.is_host and target.arch == "riscv64" and target.has_vector


def panel_width(target: Target) -> int:
    """N0: output columns per panel, one e8m2 vector (the kernel's lanes)."""
    return target.vlen // 4


def clang_flags(target: Target) -> list[str]:
    march = f"rv64gcv_zvl{target.vlen}b"
    if "+zvfhmin" in target.cpu_features or "+zvfh" in target.cpu_features:
        march += "_zvfhmin"  # f16 scales converted by vfwcvt (else by integer bit moves)
    return [
        "--target=riscv64-unknown-elf",
        f"-march={march}",
        f"-mabi={target.abi}",
        "-O3",
        "-ffreestanding",
        "-fno-builtin",
        "-fPIC",
        "-fvisibility=hidden",
        "-g",  # DWARF names the kernels' code ranges: benchmarks/dispatch_cost.py counts them as their own rows
        "-c",
    ]


def build_object(target: Target) -> Path:
    """ukernels/rvd_q4.c -> a relocatable object for this target's VLEN and extensions, cached."""
    src = source_dir()
    cmd = [_find(_CLANGS, "clang"), *clang_flags(target)]
    return ccache.compile_c(
        "ukernels",
        cmd,
        src / "rvd_q4.c",
        f"rvd_q4-vlen{target.vlen}.o",
        what="clang on ukernels/rvd_q4.c",
        headers=[src / "rvd_q4.h"],
        hint="install clang-19 (scripts/setup.sh does)",
    )


def weight_shape(k: int, n: int, n0: int) -> tuple[int, ...]:
    """Packed nibbles: N1 panels x G blocks x 16 rows x N0 bytes."""
    n1, g = packed_shape(k, n, n0, BLOCK)[:2]
    return (n1, g, 16, n0)


def scale_shape(k: int, n: int, n0: int) -> tuple[int, ...]:
    n1, g = packed_shape(k, n, n0, BLOCK)[:2]
    return (n1, g, n0)


def executable(obj: Path) -> str:
    """The stream.executable holding both exports; flat 1-D bindings sized from the operands."""
    target = '#hal.executable.target<"llvm-cpu", "embedded-elf-riscv_64">'
    return f"""stream.executable private @{EXECUTABLE} attributes {{
  hal.executable.objects = #hal.executable.objects<{{{target} = [#hal.executable.object<{{path = "{obj}"}}>]}}>
}} {{
  stream.executable.export public @q8_quantize workgroups(%wx: index) -> (index, index, index) {{
    %c1 = arith.constant 1 : index
    stream.return %wx, %c1, %c1 : index, index, index
  }}
  stream.executable.export public @q4_matmul workgroups(%wx: index) -> (index, index, index) {{
    %c1 = arith.constant 1 : index
    stream.return %wx, %c1, %c1 : index, index, index
  }}
  builtin.module {{
    func.func private @rvd_q8_quantize(memref<f32>, index, memref<i8>, index, memref<f32>, index, index, index)
        attributes {{hal.import.static, llvm.bareptr = true}}
    func.func private @rvd_q4_matmul(memref<i8>, index, memref<f32>, index, memref<i8>, index, memref<f16>, index,
        memref<f32>, index, index, index, index, index, index) attributes {{hal.import.static, llvm.bareptr = true}}
    func.func @q8_quantize(%bx: !stream.binding, %bq: !stream.binding, %bd: !stream.binding, %m: index, %k: index) {{
      %c0 = arith.constant 0 : index
      %c16 = arith.constant 16 : index
      %mk = arith.muli %m, %k : index
      %md = arith.divui %mk, %c16 : index
      %x = stream.binding.subspan %bx[%c0] : !stream.binding -> memref<?xf32>{{%mk}}
      %q = stream.binding.subspan %bq[%c0] : !stream.binding -> memref<?xi8>{{%mk}}
      %d = stream.binding.subspan %bd[%c0] : !stream.binding -> memref<?xf32>{{%md}}
      %xb, %xo, %xs, %xt = iree_codegen.extract_strided_metadata %x : memref<?xf32> -> memref<f32>, index, index, index
      %qb, %qo, %qs, %qt = iree_codegen.extract_strided_metadata %q : memref<?xi8> -> memref<i8>, index, index, index
      %db, %do, %ds, %dt = iree_codegen.extract_strided_metadata %d : memref<?xf32> -> memref<f32>, index, index, index
      func.call @rvd_q8_quantize(%xb, %xo, %qb, %qo, %db, %do, %m, %k)
          : (memref<f32>, index, memref<i8>, index, memref<f32>, index, index, index) -> ()
      return
    }}
    func.func @q4_matmul(%bq: !stream.binding, %bd: !stream.binding, %bw: !stream.binding, %bs: !stream.binding,
        %by: !stream.binding, %m: index, %k: index, %n: index, %n0: index, %n1: index) {{
      %c0 = arith.constant 0 : index
      %c2 = arith.constant 2 : index
      %c16 = arith.constant 16 : index
      %c32 = arith.constant 32 : index
      %p = stream.dispatch.workgroup.id[0] : index
      %mk = arith.muli %m, %k : index
      %md = arith.divui %mk, %c16 : index
      %kn0 = arith.muli %k, %n0 : index
      %pw = arith.muli %kn0, %n1 : index
      %wn = arith.divui %pw, %c2 : index
      %sn = arith.divui %pw, %c32 : index
      %yn = arith.muli %m, %n : index
      %q = stream.binding.subspan %bq[%c0] : !stream.binding -> memref<?xi8>{{%mk}}
      %d = stream.binding.subspan %bd[%c0] : !stream.binding -> memref<?xf32>{{%md}}
      %w = stream.binding.subspan %bw[%c0] : !stream.binding -> memref<?xi8>{{%wn}}
      %s = stream.binding.subspan %bs[%c0] : !stream.binding -> memref<?xf16>{{%sn}}
      %y = stream.binding.subspan %by[%c0] : !stream.binding -> memref<?xf32>{{%yn}}
      %qb, %qo, %qs, %qt = iree_codegen.extract_strided_metadata %q : memref<?xi8> -> memref<i8>, index, index, index
      %db, %do, %ds, %dt = iree_codegen.extract_strided_metadata %d : memref<?xf32> -> memref<f32>, index, index, index
      %wb, %wo, %ws, %wt = iree_codegen.extract_strided_metadata %w : memref<?xi8> -> memref<i8>, index, index, index
      %sb, %so, %ss, %st = iree_codegen.extract_strided_metadata %s : memref<?xf16> -> memref<f16>, index, index, index
      %yb, %yo, %ys, %yt = iree_codegen.extract_strided_metadata %y : memref<?xf32> -> memref<f32>, index, index, index
      func.call @rvd_q4_matmul(%qb, %qo, %db, %do, %wb, %wo, %sb, %so, %yb, %yo, %m, %k, %n, %n0, %p)
          : (memref<i8>, index, memref<f32>, index, memref<i8>, index, memref<f16>, index, memref<f32>, index,
             index, index, index, index, index) -> ()
      return
    }}
  }}
}}"""


def quantize_fn(name: str, k: int, opset: int) -> str:
    """X [B, S, K] f32 -> (Q [B*S, K] i8, per block (d, c) [B*S, K/32, 2] f32)."""
    g = k // BLOCK
    attrs = f"attributes {{torch.onnx_meta.opset_version = {opset} : si64}}"
    return "\n".join(
        [
            f"func.func private @{name}(%x: tensor<?x?x{k}xf32>) -> (tensor<?x{k}xi8>, tensor<?x{g}x2xf32>) {attrs} {{",
            "  %c0 = arith.constant 0 : index",
            "  %c1 = arith.constant 1 : index",
            f"  %ck = arith.constant {k} : index",
            f"  %x2 = tensor.collapse_shape %x [[0, 1], [2]] : tensor<?x?x{k}xf32> into tensor<?x{k}xf32>",
            f"  %m = tensor.dim %x2, %c0 : tensor<?x{k}xf32>",
            f"  %q, %d = flow.dispatch @{EXECUTABLE}::@q8_quantize[%c1](%x2, %m, %ck) : "
            f"(tensor<?x{k}xf32>{{%m}}, index, index) -> (tensor<?x{k}xi8>{{%m}}, tensor<?x{g}x2xf32>{{%m}})",
            f"  return %q, %d : tensor<?x{k}xi8>, tensor<?x{g}x2xf32>",
            "}",
        ]
    )


def matmul_fn(name: str, k: int, n: int, n0: int, opset: int) -> str:
    """(X [B, S, K] for the shape, Q, (d, c), packed weights, f16 scales) -> Y [B, S, N] f32."""
    g = k // BLOCK
    n1 = weight_shape(k, n, n0)[0]
    wt = tensor_type(weight_shape(k, n, n0), "i8")
    st = tensor_type(scale_shape(k, n, n0), "f16")
    attrs = f"attributes {{torch.onnx_meta.opset_version = {opset} : si64}}"
    return "\n".join(
        [
            f"func.func private @{name}(%x: tensor<?x?x{k}xf32>, %q: tensor<?x{k}xi8>, %d: tensor<?x{g}x2xf32>, "
            f"%w: {wt}, %s: {st}) -> tensor<?x?x{n}xf32> {attrs} {{",
            "  %c0 = arith.constant 0 : index",
            "  %c1 = arith.constant 1 : index",
            f"  %ck = arith.constant {k} : index",
            f"  %cn = arith.constant {n} : index",
            f"  %cn0 = arith.constant {n0} : index",
            f"  %cn1 = arith.constant {n1} : index",
            f"  %b = tensor.dim %x, %c0 : tensor<?x?x{k}xf32>",
            f"  %sq = tensor.dim %x, %c1 : tensor<?x?x{k}xf32>",
            f"  %m = tensor.dim %q, %c0 : tensor<?x{k}xi8>",
            f"  %y = flow.dispatch @{EXECUTABLE}::@q4_matmul[%cn1](%q, %d, %w, %s, %m, %ck, %cn, %cn0, %cn1) : "
            f"(tensor<?x{k}xi8>{{%m}}, tensor<?x{g}x2xf32>{{%m}}, {wt}, {st}, index, index, index, index, index) -> "
            f"tensor<?x{n}xf32>{{%m}}",
            f"  %y3 = tensor.expand_shape %y [[0, 1], [2]] output_shape [%b, %sq, {n}] : tensor<?x{n}xf32> into "
            f"tensor<?x?x{n}xf32>",
            f"  return %y3 : tensor<?x?x{n}xf32>",
            "}",
        ]
    )


def panel_lookup_fn(name: str, k: int, n: int, n0: int, opset: int, scales: bool) -> str:
    """Rows of a tied embedding table read from its lm_head's panels (ids [B, S] -> what the Gather of
    rvdeploy.q4_lookup's table returned): row v, block g is panel v / N0, column v % N0, whose 16 bytes
    (r = 0..15: values r and r + 16) are the table's in Q0 order. `scales`: the f16 block scales instead."""
    g = k // BLOCK
    src = tensor_type(scale_shape(k, n, n0), "f16") if scales else tensor_type(weight_shape(k, n, n0), "i8")
    inner, elt = (1, "f16") if scales else (16, "i8")
    out = f"tensor<?x?x{g}x1x{inner}x{elt}>"
    at = "%p[%t, %g, %j]" if scales else "%p[%t, %g, %r, %j]"
    attrs = f"attributes {{torch.onnx_meta.opset_version = {opset} : si64}}"
    return "\n".join(
        [
            f"func.func private @{name}(%ids: tensor<?x?xi64>, %p: {src}) -> {out} {attrs} {{",
            "  %c0 = arith.constant 0 : index",
            "  %c1 = arith.constant 1 : index",
            f"  %cn0 = arith.constant {n0} : index",
            "  %b = tensor.dim %ids, %c0 : tensor<?x?xi64>",
            "  %s = tensor.dim %ids, %c1 : tensor<?x?xi64>",
            f"  %e = tensor.empty(%b, %s) : {out}",
            "  %y = linalg.generic {indexing_maps = [affine_map<(d0, d1, d2, d3, d4) -> (d0, d1)>, "
            'affine_map<(d0, d1, d2, d3, d4) -> (d0, d1, d2, d3, d4)>], iterator_types = ["parallel", "parallel", '
            f'"parallel", "parallel", "parallel"]}} ins(%ids : tensor<?x?xi64>) outs(%e : {out}) {{',
            f"  ^bb0(%id: i64, %o: {elt}):",
            "    %g = linalg.index 2 : index",
            "    %r = linalg.index 4 : index",
            "    %v = arith.index_cast %id : i64 to index",
            "    %t = arith.divui %v, %cn0 : index",
            "    %j = arith.remui %v, %cn0 : index",
            f"    %x = tensor.extract {at} : {src}",
            f"    linalg.yield %x : {elt}",
            f"  }} -> {out}",
            f"  return %y : {out}",
            "}",
        ]
    )
