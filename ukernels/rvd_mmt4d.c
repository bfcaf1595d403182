// rvdeploy's mmt4d microkernels for RISC-V V 1.0 (RVV intrinsics), replacing IREE's `iree_uk_mmt4d`.
//
// Built twice from this one file:
//   * by rvdeploy (rvdeploy/ukernels.py) to LLVM bitcode per target VLEN, linked into IREE with
//     `--iree-link-bitcode=riscv_64=...bc` (override semantics: this iree_uk_mmt4d replaces the builtin);
//   * by the test harness (ukernels/harness.c) into a static riscv64 executable run under qemu-user.
//
// Tiles (rows x columns x depth = M0 x N0 x K0), all with K0 = 1; any other shape goes to the portable C
// fallback, which handles every element type the compiler can send:
//   f32  M0 = 1 (decode)   one LMUL-8 accumulator (N0 <= VLEN/4 columns per vector op), K unrolled by 4:
//                          each vfmacc does 2x the multiply-adds of IREE's LMUL-4 decode tile.
//   f32  M0 = 2, 3         LMUL-8 accumulators per row (N0 <= VLEN/4 columns per vector op).
//   f32  M0 = 4..7         LMUL-4 accumulators per row, columns in chunks of VLEN/8 (IREE's inner loop).
//   s8 x s8 -> s32 M0 = 1 (decode): one LMUL-8 s32 accumulator (N0 <= VLEN/4), int8 rows sign-extended to
//                          int16 and vwmacc.vx, K unrolled by 4.
//   s8 x s8 -> s32 M0 = 2..7: LMUL-4 s32 accumulators per row, columns in chunks of VLEN/8.
//   s16 x s16 -> s32, s16 x s8 -> s32, M0 = 1..7: vwmacc.vx on LMUL-4 s32 accumulators (IREE runs these
//                          types on its generic C tile on riscv64).
// rvdeploy's tiles (rvdeploy/tiles.toml, library "project") are f32 1 x VLEN/4 x 1 and 3 x VLEN/4 x 1, s8
// 1 x VLEN/4 x 1 and 7 x VLEN/4 x 1.
// Every RVV kernel walks the columns in chunks of at most VLMAX, so it is correct for any N0 on any
// VLEN it runs on (a larger N0 than one vector only costs more passes over the LHS).
//
// The tile functions are noinline and named `rvdeploy_uk_mmt4d_tile_*` so that `rvdeploy inspect` can
// tell, from IREE's *.optimized.ll, which library (and which kernel) a dispatch calls; iree_uk_mmt4d
// itself is always_inline, so after constant propagation a dispatch calls exactly one tile function.
#include "rvd_mmt4d.h"

#include <riscv_vector.h>
#include <stddef.h>

// Everything but iree_uk_mmt4d has internal linkage: IREE's LLVM passes fail ("failed to run LLVM-IR opt
// passes") when linked bitcode brings other external functions. The harness build (-DRVD_HARNESS)
// exports the helpers it checks.
#define RVD_NOINLINE static __attribute__((noinline))
#ifdef RVD_HARNESS
#define RVD_EXPORT
#else
#define RVD_EXPORT static __attribute__((unused))
#endif
#define RVD_INLINE static inline __attribute__((always_inline))

typedef struct rvd_params {
  const void* lhs;
  const void* rhs;
  void* out;
  int64_t lhs_stride0, rhs_stride0, out_stride0;  // in elements
  int64_t M, N, K;
  int32_t M0, N0, K0;
  uint32_t flags;
} rvd_params;

// ---------------------------------------------------------------------------------------------------
// f32, M0 = 1 (decode): out[n] += sum_k lhs[k] * rhs[k][n], one LMUL-8 accumulator per column chunk.

RVD_NOINLINE void rvdeploy_uk_mmt4d_tile_f32f32f32_1xN0x1_rvv_m8(const rvd_params* p) {
  const int64_t N0 = p->N0, K = p->K;
  const int accumulate = (p->flags & RVD_FLAG_ACCUMULATE) != 0;
  for (int64_t i = 0; i < p->M; ++i) {
    const float* lhs_row = (const float*)p->lhs + i * p->lhs_stride0;
    float* out_row = (float*)p->out + i * p->out_stride0;
    for (int64_t j = 0; j < p->N; ++j) {
      const float* rhs_panel = (const float*)p->rhs + j * p->rhs_stride0;
      float* out_tile = out_row + j * N0;
      for (int64_t c = 0; c < N0;) {
        size_t vl = __riscv_vsetvl_e32m8((size_t)(N0 - c));
        const float* r = rhs_panel + c;
        const float* l = lhs_row;
        vfloat32m8_t acc = accumulate ? __riscv_vle32_v_f32m8(out_tile + c, vl)
                                      : __riscv_vfmv_v_f_f32m8(0.0f, vl);
        int64_t k = K;
        for (; k >= 4; k -= 4) {
          acc = __riscv_vfmacc_vf_f32m8(acc, l[0], __riscv_vle32_v_f32m8(r, vl), vl);
          acc = __riscv_vfmacc_vf_f32m8(acc, l[1], __riscv_vle32_v_f32m8(r + N0, vl), vl);
          acc = __riscv_vfmacc_vf_f32m8(acc, l[2], __riscv_vle32_v_f32m8(r + 2 * N0, vl), vl);
          acc = __riscv_vfmacc_vf_f32m8(acc, l[3], __riscv_vle32_v_f32m8(r + 3 * N0, vl), vl);
          r += 4 * N0;
          l += 4;
        }
        for (; k > 0; --k) {
          acc = __riscv_vfmacc_vf_f32m8(acc, *l++, __riscv_vle32_v_f32m8(r, vl), vl);
          r += N0;
        }
        __riscv_vse32_v_f32m8(out_tile + c, acc, vl);
        c += (int64_t)vl;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// f32, M0 = 2, 3 (prefill): M0 LMUL-8 accumulators (3 x 8 registers + 8 for the RHS row = all 32). Per K
// step one RHS load and M0 scalar x vector FMAs of VLEN/4 lanes: 3 rows do 192 multiply-adds (VLEN 256) in
// 7 instructions with the loop's, where 7 rows of LMUL 4 need two column passes and 18 per 224.

#define RVD_ROWS3_DO(M0, X) X(0) if (M0 > 1) { X(1) } if (M0 > 2) { X(2) }

RVD_INLINE void rvd_f32_rows_m8(const rvd_params* p, const int M0) {
  const int64_t N0 = p->N0, K = p->K;
  const int accumulate = (p->flags & RVD_FLAG_ACCUMULATE) != 0;
  for (int64_t i = 0; i < p->M; ++i) {
    const float* lhs_panel = (const float*)p->lhs + i * p->lhs_stride0;
    float* out_row = (float*)p->out + i * p->out_stride0;
    for (int64_t j = 0; j < p->N; ++j) {
      const float* rhs_panel = (const float*)p->rhs + j * p->rhs_stride0;
      float* out_tile = out_row + j * M0 * N0;
      for (int64_t c = 0; c < N0;) {
        size_t vl = __riscv_vsetvl_e32m8((size_t)(N0 - c));
        vfloat32m8_t a0, a1, a2;
#define RVD_INIT8(R)                                                            \
  a##R = accumulate ? __riscv_vle32_v_f32m8(out_tile + (R) * N0 + c, vl)        \
                    : __riscv_vfmv_v_f_f32m8(0.0f, vl);
        RVD_ROWS3_DO(M0, RVD_INIT8)
        const float* r = rhs_panel + c;
        const float* l = lhs_panel;
        for (int64_t k = 0; k < K; ++k) {
          vfloat32m8_t b = __riscv_vle32_v_f32m8(r, vl);
#define RVD_FMA8(R) a##R = __riscv_vfmacc_vf_f32m8(a##R, l[R], b, vl);
          RVD_ROWS3_DO(M0, RVD_FMA8)
          r += N0;
          l += M0;
        }
#define RVD_STORE8(R) __riscv_vse32_v_f32m8(out_tile + (R) * N0 + c, a##R, vl);
        RVD_ROWS3_DO(M0, RVD_STORE8)
        c += (int64_t)vl;
      }
    }
  }
}

#define RVD_F32_ROWS8(M0)                                                              \
  RVD_NOINLINE void rvdeploy_uk_mmt4d_tile_f32f32f32_##M0##xN0x1_rvv_m8(const rvd_params* p) { \
    rvd_f32_rows_m8(p, M0);                                                            \
  }
RVD_F32_ROWS8(2)
RVD_F32_ROWS8(3)

// ---------------------------------------------------------------------------------------------------
// f32, M0 = 4..7 (prefill): M0 LMUL-4 accumulators (7 x 4 registers + 4 for the RHS row = all 32).

#define RVD_ROWS_DO(M0, X) \
  X(0) if (M0 > 1) { X(1) } if (M0 > 2) { X(2) } if (M0 > 3) { X(3) } \
  if (M0 > 4) { X(4) } if (M0 > 5) { X(5) } if (M0 > 6) { X(6) }

RVD_INLINE void rvd_f32_rows_m4(const rvd_params* p, const int M0) {
  const int64_t N0 = p->N0, K = p->K;
  const int accumulate = (p->flags & RVD_FLAG_ACCUMULATE) != 0;
  for (int64_t i = 0; i < p->M; ++i) {
    const float* lhs_panel = (const float*)p->lhs + i * p->lhs_stride0;
    float* out_row = (float*)p->out + i * p->out_stride0;
    for (int64_t j = 0; j < p->N; ++j) {
      const float* rhs_panel = (const float*)p->rhs + j * p->rhs_stride0;
      float* out_tile = out_row + j * M0 * N0;
      for (int64_t c = 0; c < N0;) {
        size_t vl = __riscv_vsetvl_e32m4((size_t)(N0 - c));
        vfloat32m4_t a0, a1, a2, a3, a4, a5, a6;
#define RVD_INIT(R)                                                             \
  a##R = accumulate ? __riscv_vle32_v_f32m4(out_tile + (R) * N0 + c, vl)        \
                    : __riscv_vfmv_v_f_f32m4(0.0f, vl);
        RVD_ROWS_DO(M0, RVD_INIT)
        const float* r = rhs_panel + c;
        const float* l = lhs_panel;
        // One RHS row per step: 7 x 4 accumulator registers + 4 for the row = all 32. Unrolling K by 2
        // made IREE's LLVM spill accumulators inside the loop (seen in its .s), so K is not unrolled.
        for (int64_t k = 0; k < K; ++k) {
          vfloat32m4_t b = __riscv_vle32_v_f32m4(r, vl);
#define RVD_FMA0(R) a##R = __riscv_vfmacc_vf_f32m4(a##R, l[R], b, vl);
          RVD_ROWS_DO(M0, RVD_FMA0)
          r += N0;
          l += M0;
        }
#define RVD_STORE(R) __riscv_vse32_v_f32m4(out_tile + (R) * N0 + c, a##R, vl);
        RVD_ROWS_DO(M0, RVD_STORE)
        c += (int64_t)vl;
      }
    }
  }
}

#define RVD_F32_ROWS(M0)                                                               \
  RVD_NOINLINE void rvdeploy_uk_mmt4d_tile_f32f32f32_##M0##xN0x1_rvv_m4(const rvd_params* p) { \
    rvd_f32_rows_m4(p, M0);                                                            \
  }
RVD_F32_ROWS(4)
RVD_F32_ROWS(5)
RVD_F32_ROWS(6)
RVD_F32_ROWS(7)

// ---------------------------------------------------------------------------------------------------
// s16 x s16 -> s32 and s16 x s8 -> s32, M0 = 1..7: widening vwmacc.vx into LMUL-4 s32 accumulators.

RVD_INLINE void rvd_s16_rows(const rvd_params* p, const int M0, const int rhs_s8) {
  const int64_t N0 = p->N0, K = p->K;
  const int accumulate = (p->flags & RVD_FLAG_ACCUMULATE) != 0;
  for (int64_t i = 0; i < p->M; ++i) {
    const int16_t* lhs_panel = (const int16_t*)p->lhs + i * p->lhs_stride0;
    int32_t* out_row = (int32_t*)p->out + i * p->out_stride0;
    for (int64_t j = 0; j < p->N; ++j) {
      int32_t* out_tile = out_row + j * M0 * N0;
      for (int64_t c = 0; c < N0;) {
        size_t vl = __riscv_vsetvl_e32m4((size_t)(N0 - c));
        vint32m4_t a0, a1, a2, a3, a4, a5, a6;
#define RVD_IINIT(R)                                                           \
  a##R = accumulate ? __riscv_vle32_v_i32m4(out_tile + (R) * N0 + c, vl)       \
                    : __riscv_vmv_v_x_i32m4(0, vl);
        RVD_ROWS_DO(M0, RVD_IINIT)
        const int16_t* l = lhs_panel;
        for (int64_t k = 0; k < K; ++k) {
          vint16m2_t b;
          if (rhs_s8) {
            const int8_t* r8 = (const int8_t*)p->rhs + j * p->rhs_stride0 + k * N0 + c;
            b = __riscv_vsext_vf2_i16m2(__riscv_vle8_v_i8m1(r8, vl), vl);
          } else {
            const int16_t* r16 = (const int16_t*)p->rhs + j * p->rhs_stride0 + k * N0 + c;
            b = __riscv_vle16_v_i16m2(r16, vl);
          }
#define RVD_WMACC(R) a##R = __riscv_vwmacc_vx_i32m4(a##R, l[R], b, vl);
          RVD_ROWS_DO(M0, RVD_WMACC)
          l += M0;
        }
#define RVD_ISTORE(R) __riscv_vse32_v_i32m4(out_tile + (R) * N0 + c, a##R, vl);
        RVD_ROWS_DO(M0, RVD_ISTORE)
        c += (int64_t)vl;
      }
    }
  }
}

#define RVD_S16_ROWS(M0)                                                                       \
  RVD_NOINLINE void rvdeploy_uk_mmt4d_tile_s16s16s32_##M0##xN0x1_rvv(const rvd_params* p) {   \
    rvd_s16_rows(p, M0, 0);                                                                    \
  }                                                                                            \
  RVD_NOINLINE void rvdeploy_uk_mmt4d_tile_s16s8s32_##M0##xN0x1_rvv(const rvd_params* p) {    \
    rvd_s16_rows(p, M0, 1);                                                                    \
  }
RVD_S16_ROWS(1)
RVD_S16_ROWS(2)
RVD_S16_ROWS(3)
RVD_S16_ROWS(4)
RVD_S16_ROWS(5)
RVD_S16_ROWS(6)
RVD_S16_ROWS(7)

// ---------------------------------------------------------------------------------------------------
// s8 x s8 -> s32 (int8 models: MatMulInteger with the uint8 activations flipped to int8).
//
// Per K step the RHS row is loaded as int8 and sign-extended once to int16 (vle8 + vsext.vf2), then each
// LHS row does one vwmacc.vx (int16 scalar x int16 vector, widened into int32): exact for any int8 inputs.
// (Accumulating two products in int16 before widening would save an instruction per pair, but overflows
// when both operands are -128: (-128)(-128) x 2 = 32768.)

// M0 = 1 (decode): N0 <= VLEN/4 columns per pass: int8 m2 -> int16 m4 -> one int32 m8 accumulator, so each
// vwmacc does 2x the multiply-adds of IREE's 1 x VLEN/8 tile (int32 m4); K unrolled by 4.
RVD_NOINLINE void rvdeploy_uk_mmt4d_tile_s8s8s32_1xN0x1_rvv_m8(const rvd_params* p) {
  const int64_t N0 = p->N0, K = p->K;
  const int accumulate = (p->flags & RVD_FLAG_ACCUMULATE) != 0;
  for (int64_t i = 0; i < p->M; ++i) {
    const int8_t* lhs_row = (const int8_t*)p->lhs + i * p->lhs_stride0;
    int32_t* out_row = (int32_t*)p->out + i * p->out_stride0;
    for (int64_t j = 0; j < p->N; ++j) {
      const int8_t* rhs_panel = (const int8_t*)p->rhs + j * p->rhs_stride0;
      int32_t* out_tile = out_row + j * N0;
      for (int64_t c = 0; c < N0;) {
        size_t vl = __riscv_vsetvl_e8m2((size_t)(N0 - c));
        const int8_t* r = rhs_panel + c;
        const int8_t* l = lhs_row;
        vint32m8_t acc = accumulate ? __riscv_vle32_v_i32m8(out_tile + c, vl) : __riscv_vmv_v_x_i32m8(0, vl);
#define RVD_S8_STEP(Q, R)                                                                          \
  acc = __riscv_vwmacc_vx_i32m8(acc, (int16_t)(Q), __riscv_vsext_vf2_i16m4(__riscv_vle8_v_i8m2((R), vl), vl), vl);
        int64_t k = K;
        for (; k >= 4; k -= 4) {
          RVD_S8_STEP(l[0], r)
          RVD_S8_STEP(l[1], r + N0)
          RVD_S8_STEP(l[2], r + 2 * N0)
          RVD_S8_STEP(l[3], r + 3 * N0)
          r += 4 * N0;
          l += 4;
        }
        for (; k > 0; --k) {
          RVD_S8_STEP(*l++, r)
          r += N0;
        }
#undef RVD_S8_STEP
        __riscv_vse32_v_i32m8(out_tile + c, acc, vl);
        c += (int64_t)vl;
      }
    }
  }
}

// M0 = 2..7 (prefill): M0 int32 m4 accumulators (7 x 4 registers + the int8 m1 row + its int16 m2 copy = 31),
// columns in chunks of VLEN/8; IREE's inner loop, without a call per N0 tile.
RVD_INLINE void rvd_s8_rows_m4(const rvd_params* p, const int M0) {
  const int64_t N0 = p->N0, K = p->K;
  const int accumulate = (p->flags & RVD_FLAG_ACCUMULATE) != 0;
  for (int64_t i = 0; i < p->M; ++i) {
    const int8_t* lhs_panel = (const int8_t*)p->lhs + i * p->lhs_stride0;
    int32_t* out_row = (int32_t*)p->out + i * p->out_stride0;
    for (int64_t j = 0; j < p->N; ++j) {
      const int8_t* rhs_panel = (const int8_t*)p->rhs + j * p->rhs_stride0;
      int32_t* out_tile = out_row + j * M0 * N0;
      for (int64_t c = 0; c < N0;) {
        size_t vl = __riscv_vsetvl_e32m4((size_t)(N0 - c));
        vint32m4_t a0, a1, a2, a3, a4, a5, a6;
        RVD_ROWS_DO(M0, RVD_IINIT)
        const int8_t* r = rhs_panel + c;
        const int8_t* l = lhs_panel;
        for (int64_t k = 0; k < K; ++k) {
          vint16m2_t b = __riscv_vsext_vf2_i16m2(__riscv_vle8_v_i8m1(r, vl), vl);
          RVD_ROWS_DO(M0, RVD_WMACC)
          r += N0;
          l += M0;
        }
        RVD_ROWS_DO(M0, RVD_ISTORE)
        c += (int64_t)vl;
      }
    }
  }
}

#define RVD_S8_ROWS(M0)                                                                       \
  RVD_NOINLINE void rvdeploy_uk_mmt4d_tile_s8s8s32_##M0##xN0x1_rvv_m4(const rvd_params* p) { \
    rvd_s8_rows_m4(p, M0);                                                                    \
  }
RVD_S8_ROWS(2)
RVD_S8_ROWS(3)
RVD_S8_ROWS(4)
RVD_S8_ROWS(5)
RVD_S8_ROWS(6)
RVD_S8_ROWS(7)

// ---------------------------------------------------------------------------------------------------
// Portable C fallback: every type, any M0 / N0 / K0, honouring ACCUMULATE and (f16/bf16 outputs)
// SKIP_INTERMEDIATE_ROUNDINGS the way IREE's generic tiles do.

typedef union { float f; uint32_t u; } rvd_fbits;

RVD_EXPORT float rvd_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
  rvd_fbits r;
  if (exp == 0x1F) {
    r.u = sign | 0x7F800000u | (man << 13);
  } else if (exp == 0) {
    if (man == 0) {
      r.u = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do { ++e; man <<= 1; } while (!(man & 0x400u));
      r.u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3FFu) << 13);
    }
  } else {
    r.u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  return r.f;
}

RVD_EXPORT uint16_t rvd_f32_to_f16(float f) {
  rvd_fbits v = {f};
  uint32_t sign = (v.u >> 16) & 0x8000u, a = v.u & 0x7FFFFFFFu;
  if (a >= 0x7F800000u) return (uint16_t)(sign | 0x7C00u | (a > 0x7F800000u ? 0x200u : 0));
  if (a >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u);  // rounds to >= 65520: inf
  int32_t exp = (int32_t)(a >> 23) - 127 + 15;
  uint32_t man = (a & 0x7FFFFFu) | 0x800000u;
  if (exp <= 0) {  // subnormal or zero in f16
    if (exp < -10) return (uint16_t)sign;
    uint32_t shift = (uint32_t)(14 - exp);  // 24-bit mantissa -> (10 + exp) bits
    uint32_t q = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) ++q;
    return (uint16_t)(sign | q);
  }
  uint32_t q = man >> 13, rem = man & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (q & 1))) ++q;
  if (q & 0x800u) { q >>= 1; ++exp; }  // mantissa overflow
  if (exp >= 31) return (uint16_t)(sign | 0x7C00u);
  return (uint16_t)(sign | ((uint32_t)exp << 10) | (q & 0x3FFu));
}

RVD_EXPORT float rvd_bf16_to_f32(uint16_t h) {
  rvd_fbits r;
  r.u = (uint32_t)h << 16;
  return r.f;
}

RVD_EXPORT uint16_t rvd_f32_to_bf16(float f) {
  rvd_fbits v = {f};
  if ((v.u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((v.u >> 16) | 0x40u);  // quiet NaN
  uint32_t rounding = 0x7FFFu + ((v.u >> 16) & 1u);
  return (uint16_t)((v.u + rounding) >> 16);
}

enum { RVD_F32, RVD_F16, RVD_BF16, RVD_S8, RVD_S16, RVD_S32, RVD_S4, RVD_U4 };

typedef struct { int lhs, rhs, out; } rvd_types;

static rvd_types rvd_types_of(uint32_t flags) {
  switch (flags & RVD_FLAG_TYPE_MASK) {
    case RVD_TYPE_F32F32F32: return (rvd_types){RVD_F32, RVD_F32, RVD_F32};
    case RVD_TYPE_S8S8S32: return (rvd_types){RVD_S8, RVD_S8, RVD_S32};
    case RVD_TYPE_F16F16F32: return (rvd_types){RVD_F16, RVD_F16, RVD_F32};
    case RVD_TYPE_F16F16F16: return (rvd_types){RVD_F16, RVD_F16, RVD_F16};
    case RVD_TYPE_BF16BF16F32: return (rvd_types){RVD_BF16, RVD_BF16, RVD_F32};
    case RVD_TYPE_BF16BF16BF16: return (rvd_types){RVD_BF16, RVD_BF16, RVD_BF16};
    case RVD_TYPE_S16S16S32: return (rvd_types){RVD_S16, RVD_S16, RVD_S32};
    case RVD_TYPE_S16U4S32: return (rvd_types){RVD_S16, RVD_U4, RVD_S32};
    case RVD_TYPE_S16S8S32: return (rvd_types){RVD_S16, RVD_S8, RVD_S32};
    case RVD_TYPE_S8S4S32: return (rvd_types){RVD_S8, RVD_S4, RVD_S32};
    default: return (rvd_types){-1, -1, -1};
  }
}

static int rvd_is_int(int t) { return t >= RVD_S8; }

// Element e of a buffer of type t: integers widened to int32, floats to float.
static int32_t rvd_load_int(const void* base, int t, int64_t e) {
  switch (t) {
    case RVD_S8: return ((const int8_t*)base)[e];
    case RVD_S16: return ((const int16_t*)base)[e];
    case RVD_S32: return ((const int32_t*)base)[e];
    case RVD_S4: {
      uint8_t b = ((const uint8_t*)base)[e >> 1];
      int32_t v = (e & 1) ? (b >> 4) : (b & 0xF);
      return v >= 8 ? v - 16 : v;
    }
    default: {  // RVD_U4
      uint8_t b = ((const uint8_t*)base)[e >> 1];
      return (e & 1) ? (b >> 4) : (b & 0xF);
    }
  }
}

static float rvd_load_float(const void* base, int t, int64_t e) {
  switch (t) {
    case RVD_F32: return ((const float*)base)[e];
    case RVD_F16: return rvd_f16_to_f32(((const uint16_t*)base)[e]);
    default: return rvd_bf16_to_f32(((const uint16_t*)base)[e]);
  }
}

static float rvd_round_to(int t, float v) {
  if (t == RVD_F16) return rvd_f16_to_f32(rvd_f32_to_f16(v));
  if (t == RVD_BF16) return rvd_bf16_to_f32(rvd_f32_to_bf16(v));
  return v;
}

static void rvd_store_float(void* base, int t, int64_t e, float v) {
  if (t == RVD_F32) ((float*)base)[e] = v;
  else if (t == RVD_F16) ((uint16_t*)base)[e] = rvd_f32_to_f16(v);
  else ((uint16_t*)base)[e] = rvd_f32_to_bf16(v);
}

RVD_NOINLINE void rvdeploy_uk_mmt4d_tile_generic(const rvd_params* p) {
  rvd_types t = rvd_types_of(p->flags);
  if (t.out < 0) return;
  const int64_t M0 = p->M0, N0 = p->N0, K0 = p->K0;
  const int accumulate = (p->flags & RVD_FLAG_ACCUMULATE) != 0;
  const int round_each_step = !(p->flags & RVD_FLAG_SKIP_INTERMEDIATE_ROUNDINGS);
  for (int64_t i = 0; i < p->M; ++i) {
    for (int64_t j = 0; j < p->N; ++j) {
      const int64_t lhs_base = i * p->lhs_stride0, rhs_base = j * p->rhs_stride0;
      const int64_t out_base = i * p->out_stride0 + j * M0 * N0;
      for (int64_t i0 = 0; i0 < M0; ++i0) {
        for (int64_t j0 = 0; j0 < N0; ++j0) {
          const int64_t o = out_base + i0 * N0 + j0;
          if (rvd_is_int(t.out)) {
            int32_t acc = accumulate ? ((int32_t*)p->out)[o] : 0;
            for (int64_t k = 0; k < p->K; ++k)
              for (int64_t k0 = 0; k0 < K0; ++k0)
                acc += rvd_load_int(p->lhs, t.lhs, lhs_base + (k * M0 + i0) * K0 + k0) *
                       rvd_load_int(p->rhs, t.rhs, rhs_base + (k * N0 + j0) * K0 + k0);
            ((int32_t*)p->out)[o] = acc;
          } else {
            float acc = accumulate ? rvd_load_float(p->out, t.out, o) : 0.0f;
            for (int64_t k = 0; k < p->K; ++k)
              for (int64_t k0 = 0; k0 < K0; ++k0) {
                float prod = rvd_load_float(p->lhs, t.lhs, lhs_base + (k * M0 + i0) * K0 + k0) *
                             rvd_load_float(p->rhs, t.rhs, rhs_base + (k * N0 + j0) * K0 + k0);
                acc += prod;
                if (round_each_step) acc = rvd_round_to(t.out, acc);
              }
            rvd_store_float(p->out, t.out, o, acc);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Selection and the entry point.

// The selection, as one list used twice: to call (direct calls only, no function-pointer tables, so that
// after IREE inlines iree_uk_mmt4d with constant M0/N0/K0/flags a dispatch calls exactly one kernel)
// and, in the harness, to name the kernel a case used.
#define RVD_KERNELS(X)                                                                  \
  X(type == RVD_TYPE_F32F32F32 && M0 == 1, rvdeploy_uk_mmt4d_tile_f32f32f32_1xN0x1_rvv_m8) \
  X(type == RVD_TYPE_F32F32F32 && M0 == 2, rvdeploy_uk_mmt4d_tile_f32f32f32_2xN0x1_rvv_m8) \
  X(type == RVD_TYPE_F32F32F32 && M0 == 3, rvdeploy_uk_mmt4d_tile_f32f32f32_3xN0x1_rvv_m8) \
  X(type == RVD_TYPE_F32F32F32 && M0 == 4, rvdeploy_uk_mmt4d_tile_f32f32f32_4xN0x1_rvv_m4) \
  X(type == RVD_TYPE_F32F32F32 && M0 == 5, rvdeploy_uk_mmt4d_tile_f32f32f32_5xN0x1_rvv_m4) \
  X(type == RVD_TYPE_F32F32F32 && M0 == 6, rvdeploy_uk_mmt4d_tile_f32f32f32_6xN0x1_rvv_m4) \
  X(type == RVD_TYPE_F32F32F32 && M0 == 7, rvdeploy_uk_mmt4d_tile_f32f32f32_7xN0x1_rvv_m4) \
  X(type == RVD_TYPE_S8S8S32 && M0 == 1, rvdeploy_uk_mmt4d_tile_s8s8s32_1xN0x1_rvv_m8) \
  X(type == RVD_TYPE_S8S8S32 && M0 == 2, rvdeploy_uk_mmt4d_tile_s8s8s32_2xN0x1_rvv_m4) \
  X(type == RVD_TYPE_S8S8S32 && M0 == 3, rvdeploy_uk_mmt4d_tile_s8s8s32_3xN0x1_rvv_m4) \
  X(type == RVD_TYPE_S8S8S32 && M0 == 4, rvdeploy_uk_mmt4d_tile_s8s8s32_4xN0x1_rvv_m4) \
  X(type == RVD_TYPE_S8S8S32 && M0 == 5, rvdeploy_uk_mmt4d_tile_s8s8s32_5xN0x1_rvv_m4) \
  X(type == RVD_TYPE_S8S8S32 && M0 == 6, rvdeploy_uk_mmt4d_tile_s8s8s32_6xN0x1_rvv_m4) \
  X(type == RVD_TYPE_S8S8S32 && M0 == 7, rvdeploy_uk_mmt4d_tile_s8s8s32_7xN0x1_rvv_m4) \
  X(type == RVD_TYPE_S16S16S32 && M0 == 1, rvdeploy_uk_mmt4d_tile_s16s16s32_1xN0x1_rvv)    \
  X(type == RVD_TYPE_S16S16S32 && M0 == 2, rvdeploy_uk_mmt4d_tile_s16s16s32_2xN0x1_rvv)    \
  X(type == RVD_TYPE_S16S16S32 && M0 == 3, rvdeploy_uk_mmt4d_tile_s16s16s32_3xN0x1_rvv)    \
  X(type == RVD_TYPE_S16S16S32 && M0 == 4, rvdeploy_uk_mmt4d_tile_s16s16s32_4xN0x1_rvv)    \
  X(type == RVD_TYPE_S16S16S32 && M0 == 5, rvdeploy_uk_mmt4d_tile_s16s16s32_5xN0x1_rvv)    \
  X(type == RVD_TYPE_S16S16S32 && M0 == 6, rvdeploy_uk_mmt4d_tile_s16s16s32_6xN0x1_rvv)    \
  X(type == RVD_TYPE_S16S16S32 && M0 == 7, rvdeploy_uk_mmt4d_tile_s16s16s32_7xN0x1_rvv)    \
  X(type == RVD_TYPE_S16S8S32 && M0 == 1, rvdeploy_uk_mmt4d_tile_s16s8s32_1xN0x1_rvv)      \
  X(type == RVD_TYPE_S16S8S32 && M0 == 2, rvdeploy_uk_mmt4d_tile_s16s8s32_2xN0x1_rvv)      \
  X(type == RVD_TYPE_S16S8S32 && M0 == 3, rvdeploy_uk_mmt4d_tile_s16s8s32_3xN0x1_rvv)      \
  X(type == RVD_TYPE_S16S8S32 && M0 == 4, rvdeploy_uk_mmt4d_tile_s16s8s32_4xN0x1_rvv)      \
  X(type == RVD_TYPE_S16S8S32 && M0 == 5, rvdeploy_uk_mmt4d_tile_s16s8s32_5xN0x1_rvv)      \
  X(type == RVD_TYPE_S16S8S32 && M0 == 6, rvdeploy_uk_mmt4d_tile_s16s8s32_6xN0x1_rvv)      \
  X(type == RVD_TYPE_S16S8S32 && M0 == 7, rvdeploy_uk_mmt4d_tile_s16s8s32_7xN0x1_rvv)

RVD_INLINE void rvd_run(const rvd_params* p) {
  const uint32_t type = p->flags & RVD_FLAG_TYPE_MASK;
  const int32_t M0 = p->M0;
  if (p->K0 == 1 && p->N0 >= 1) {
#define RVD_CALL(COND, FN) if (COND) { FN(p); return; }
    RVD_KERNELS(RVD_CALL)
#undef RVD_CALL
  }
  rvdeploy_uk_mmt4d_tile_generic(p);
}

RVD_EXPORT const char* rvd_mmt4d_kernel_name(int32_t M0, int32_t N0, int32_t K0, uint32_t flags) {
  const uint32_t type = flags & RVD_FLAG_TYPE_MASK;
  if (K0 == 1 && N0 >= 1) {
#define RVD_NAME(COND, FN) if (COND) return #FN;
    RVD_KERNELS(RVD_NAME)
#undef RVD_NAME
  }
  return "rvdeploy_uk_mmt4d_tile_generic";
}

static int rvd_elem_bits(int t) {
  switch (t) {
    case RVD_F32: case RVD_S32: return 32;
    case RVD_F16: case RVD_BF16: case RVD_S16: return 16;
    case RVD_S8: return 8;
    default: return 4;
  }
}

static void* rvd_offset(const void* base, int t, int64_t offset) {
  return (char*)base + (offset * rvd_elem_bits(t)) / 8;
}

__attribute__((always_inline)) int iree_uk_mmt4d(
    const void* lhs, int64_t lhs_offset, int64_t lhs_stride0, const void* rhs, int64_t rhs_offset,
    int64_t rhs_stride0, void* out, int64_t out_offset, int64_t out_stride0, int64_t M, int64_t N,
    int64_t K, int32_t M0, int32_t N0, int32_t K0, uint32_t flags, const uint64_t* cpu_data) {
  (void)cpu_data;
  rvd_types t = rvd_types_of(flags);
  if (t.out < 0 || M <= 0 || N <= 0) return 0;
  void* out_ptr = rvd_offset(out, t.out, out_offset);
  if (K <= 0) {  // no products: clear unless accumulating
    if (!(flags & RVD_FLAG_ACCUMULATE)) {
      const int64_t bytes = (int64_t)M0 * N0 * N * rvd_elem_bits(t.out) / 8;
      const int64_t stride = out_stride0 * rvd_elem_bits(t.out) / 8;
      for (int64_t i = 0; i < M; ++i) {
        volatile char* row = (char*)out_ptr + i * stride;  // volatile: no memset call in freestanding code
        for (int64_t b = 0; b < bytes; ++b) row[b] = 0;
      }
    }
    return 0;
  }
  rvd_params p = {rvd_offset(lhs, t.lhs, lhs_offset), rvd_offset(rhs, t.rhs, rhs_offset), out_ptr,
                  lhs_stride0, rhs_stride0, out_stride0, M, N, K, M0, N0, K0, flags};
  rvd_run(&p);
  return 0;
}
