// rvdeploy's 4-bit matmul kernels for RISC-V V 1.0 (Q4_0 weights x Q8_0 activations, like llama.cpp's).
//
// Built to an object per target VLEN and linked into the module's dispatches as external functions
// (rvdeploy/q4kernel.py: an IREE stream.executable with hal.executable.objects), and by
// the test harness (ukernels/harness.c) into a riscv64 executable run under qemu-user.
//
// Two entry points, each called once per workgroup:
//   rvd_q8_quantize   X [M, K] f32 -> Q [M, K] int8 and per block of 32 (d, c): x ~ d q, d = amax / 127,
//                     c = -8 sum(q) (the weights' zero point folded, see below). One workgroup.
//   rvd_q4_matmul     Y [M, N] f32 = X W^T for one panel of N0 output columns (workgroup x = panel).
// Weight layout (rvdeploy/layout.py pack_q4_panels): W [N, K] in panels of N0 columns; per panel and block
// g of 32 K values, 16 rows of N0 bytes: byte (r, c) = q[c][32g + r] | q[c][32g + 16 + r] << 4 with
// q = round(w / s) + 8 in 0..15 (unsigned nibbles); then the f16 scales s[panel][g][N0].
//
// Decode (lanes = output columns, VLEN/4 of them at e8m2): per row r, one vle8 serves two K values (vand,
// vsrl), each multiplied by the int8 activation scalar with vwmacc.vx into int16 accumulators; the low and
// high nibbles have their own accumulator (16 products of 127 x 15 each: at most 30480, fits int16), summed
// once per block into int32 (vwadd). sum_k a (q - 8) = sum_k a q - 8 sum_k a, so the zero point costs one
// scalar add per block (c). Then per block: convert to f32, add c, multiply by the weight scales and the
// activation's d, accumulate in f32. No weight is ever dequantized to memory. Prefill: two rows share each
// unpacked weight vector (rvd_q4_matmul's row-pair loop).
#include "rvd_q4.h"

#include <riscv_vector.h>

#define RVD_Q4_BLOCK 32

#ifdef RVD_HARNESS
#define RVD_Q4_API
#else
// hidden: the module's embedded ELF loader has no PLT, so the dispatch must call the definition directly
#define RVD_Q4_API __attribute__((visibility("hidden")))
#endif

RVD_Q4_API void rvd_q8_quantize(const float* x, size_t xo, int8_t* q, size_t qo, float* dc, size_t dco,
                                size_t M, size_t K) {
  x += xo;
  q += qo;
  dc += dco;
  const size_t G = K / RVD_Q4_BLOCK;
  for (size_t m = 0; m < M; ++m) {
    for (size_t g = 0; g < G; ++g) {
      const float* xb = x + m * K + g * RVD_Q4_BLOCK;
      int8_t* qb = q + m * K + g * RVD_Q4_BLOCK;
      // m8 holds 32 f32 on any VLEN >= 128, so one block is one pass
      size_t vl = __riscv_vsetvl_e32m8(RVD_Q4_BLOCK);
      vfloat32m8_t v = __riscv_vle32_v_f32m8(xb, vl);
      vfloat32m1_t zero = __riscv_vfmv_v_f_f32m1(0.0f, 1);
      float amax = __riscv_vfmv_f_s_f32m1_f32(
          __riscv_vfredmax_vs_f32m8_f32m1(__riscv_vfabs_v_f32m8(v, vl), zero, vl));
      float d = amax / 127.0f;
      float id = d != 0.0f ? 1.0f / d : 0.0f;
      // round to nearest (even) with the default rounding mode, then narrow f32 -> i16 -> i8 (|q| <= 127)
      vint16m4_t q16 = __riscv_vfncvt_x_f_w_i16m4(__riscv_vfmul_vf_f32m8(v, id, vl), vl);
      vint8m2_t q8 = __riscv_vncvt_x_x_w_i8m2(q16, vl);
      __riscv_vse8_v_i8m2(qb, q8, vl);
      vint16m1_t z16 = __riscv_vmv_v_x_i16m1(0, 1);
      int32_t sum = __riscv_vmv_x_s_i16m1_i16(__riscv_vwredsum_vs_i8m2_i16m1(q8, z16, vl));
      dc[(m * G + g) * 2] = d;
      dc[(m * G + g) * 2 + 1] = (float)(-8 * sum);
    }
  }
}

// f16 scales -> f32: vfwcvt with Zvfhmin; otherwise exact integer bit moves (sign, then exponent and
// mantissa shifted into place, giving the value times 2^-112, multiplied back).
static inline vfloat32m8_t rvd_f16_to_f32(const uint16_t* s, size_t vl) {
#if defined(__riscv_zvfhmin) || defined(__riscv_zvfh)
  return __riscv_vfwcvt_f_f_v_f32m8(__riscv_vreinterpret_v_u16m4_f16m4(__riscv_vle16_v_u16m4(s, vl)), vl);
#else
  // sign-extended h << 13: bit 31 = sign, bits 27..13 = exponent and mantissa, bits 30..28 cleared
  vint32m8_t b = __riscv_vwmul_vx_i32m8(__riscv_vle16_v_i16m4((const int16_t*)s, vl), 8192, vl);
  b = __riscv_vand_vx_i32m8(b, (int32_t)0x8FFFFFFF, vl);
  return __riscv_vfmul_vf_f32m8(__riscv_vreinterpret_v_i32m8_f32m8(b), 0x1p112f, vl);
#endif
}

#define RVD_Q4_ROW(R)                                                                                     \
  {                                                                                                       \
    vuint8m2_t v = __riscv_vle8_v_u8m2(wb + (R) * N0, vl);                                                \
    vint8m2_t lo = __riscv_vreinterpret_v_u8m2_i8m2(__riscv_vand_vx_u8m2(v, 0x0F, vl));                   \
    vint8m2_t hi = __riscv_vreinterpret_v_u8m2_i8m2(__riscv_vsrl_vx_u8m2(v, 4, vl));                      \
    if ((R) == 0) {                                                                                       \
      alo = __riscv_vwmul_vx_i16m4(lo, a[0], vl);                                                         \
      ahi = __riscv_vwmul_vx_i16m4(hi, a[16], vl);                                                        \
    } else {                                                                                              \
      alo = __riscv_vwmacc_vx_i16m4(alo, a[R], lo, vl);                                                   \
      ahi = __riscv_vwmacc_vx_i16m4(ahi, a[16 + (R)], hi, vl);                                            \
    }                                                                                                     \
  }

// Two rows (prefill) share each unpacked weight vector: per K step one vle8 + vand + vsrl serve four vwmacc.
// 4 int16 accumulators (16 registers) + the scales (8) + a row's int32 sum (8) fill the register file, so the
// f32 sums live in Y (one vle32 + vse32 per row and block) instead of registers.
#define RVD_Q4_ROW2(R)                                                                                    \
  {                                                                                                       \
    vuint8m2_t v = __riscv_vle8_v_u8m2(wb + (R) * N0, vl);                                                \
    vint8m2_t lo = __riscv_vreinterpret_v_u8m2_i8m2(__riscv_vand_vx_u8m2(v, 0x0F, vl));                   \
    vint8m2_t hi = __riscv_vreinterpret_v_u8m2_i8m2(__riscv_vsrl_vx_u8m2(v, 4, vl));                      \
    if ((R) == 0) {                                                                                       \
      l0 = __riscv_vwmul_vx_i16m4(lo, a0[0], vl);                                                         \
      h0 = __riscv_vwmul_vx_i16m4(hi, a0[16], vl);                                                        \
      l1 = __riscv_vwmul_vx_i16m4(lo, a1[0], vl);                                                         \
      h1 = __riscv_vwmul_vx_i16m4(hi, a1[16], vl);                                                        \
    } else {                                                                                              \
      l0 = __riscv_vwmacc_vx_i16m4(l0, a0[R], lo, vl);                                                    \
      h0 = __riscv_vwmacc_vx_i16m4(h0, a0[16 + (R)], hi, vl);                                             \
      l1 = __riscv_vwmacc_vx_i16m4(l1, a1[R], lo, vl);                                                    \
      h1 = __riscv_vwmacc_vx_i16m4(h1, a1[16 + (R)], hi, vl);                                             \
    }                                                                                                     \
  }

// Y row += d (sum + c) s for one block (the first block stores instead of accumulating).
static inline void rvd_q4_finish(float* yrow, vint16m4_t lo, vint16m4_t hi, vfloat32m8_t s, float d, float c,
                                 int first, size_t vl) {
  vfloat32m8_t t = __riscv_vfcvt_f_x_v_f32m8(__riscv_vwadd_vv_i32m8(lo, hi, vl), vl);
  t = __riscv_vfmul_vv_f32m8(__riscv_vfadd_vf_f32m8(t, c, vl), s, vl);
  if (first) {
    __riscv_vse32_v_f32m8(yrow, __riscv_vfmul_vf_f32m8(t, d, vl), vl);
  } else {
    __riscv_vse32_v_f32m8(yrow, __riscv_vfmacc_vf_f32m8(__riscv_vle32_v_f32m8(yrow, vl), d, t, vl), vl);
  }
}

RVD_Q4_API void rvd_q4_matmul(const int8_t* q, size_t qo, const float* dc, size_t dco, const uint8_t* w,
                              size_t wo, const uint16_t* ws, size_t wso, float* y, size_t yo, size_t M,
                              size_t K, size_t N, size_t N0, size_t panel) {
  q += qo;
  dc += dco;
  y += yo;
  const size_t G = K / RVD_Q4_BLOCK;
  const uint8_t* wp = w + wo + panel * G * 16 * N0;
  const uint16_t* sp = ws + wso + panel * G * N0;
  const size_t col0 = panel * N0;
  const size_t cols = N - col0 < N0 ? N - col0 : N0;
  size_t m = 0;
  for (; m + 2 <= M; m += 2) {
    const int8_t* q0 = q + m * K;
    const float* dc0 = dc + m * G * 2;
    for (size_t c = 0; c < cols;) {
      size_t vl = __riscv_vsetvl_e8m2(cols - c);
      float* y0 = y + m * N + col0 + c;
      for (size_t g = 0; g < G; ++g) {
        const uint8_t* wb = wp + g * 16 * N0 + c;
        const int8_t* a0 = q0 + g * RVD_Q4_BLOCK;
        const int8_t* a1 = a0 + K;
        vint16m4_t l0, h0, l1, h1;
        RVD_Q4_ROW2(0) RVD_Q4_ROW2(1) RVD_Q4_ROW2(2) RVD_Q4_ROW2(3)
        RVD_Q4_ROW2(4) RVD_Q4_ROW2(5) RVD_Q4_ROW2(6) RVD_Q4_ROW2(7)
        RVD_Q4_ROW2(8) RVD_Q4_ROW2(9) RVD_Q4_ROW2(10) RVD_Q4_ROW2(11)
        RVD_Q4_ROW2(12) RVD_Q4_ROW2(13) RVD_Q4_ROW2(14) RVD_Q4_ROW2(15)
        vfloat32m8_t s = rvd_f16_to_f32(sp + g * N0 + c, vl);
        rvd_q4_finish(y0, l0, h0, s, dc0[2 * g], dc0[2 * g + 1], g == 0, vl);
        rvd_q4_finish(y0 + N, l1, h1, s, dc0[2 * G + 2 * g], dc0[2 * G + 2 * g + 1], g == 0, vl);
      }
      c += vl;
    }
  }
  for (; m < M; ++m) {  // one row (decode): the f32 sums stay in registers
    const int8_t* qrow = q + m * K;
    const float* dcrow = dc + m * G * 2;
    for (size_t c = 0; c < cols;) {
      size_t vl = __riscv_vsetvl_e8m2(cols - c);
      vfloat32m8_t acc = __riscv_vfmv_v_f_f32m8(0.0f, vl);
      for (size_t g = 0; g < G; ++g) {
        const uint8_t* wb = wp + g * 16 * N0 + c;
        const int8_t* a = qrow + g * RVD_Q4_BLOCK;
        vint16m4_t alo, ahi;
        RVD_Q4_ROW(0) RVD_Q4_ROW(1) RVD_Q4_ROW(2) RVD_Q4_ROW(3)
        RVD_Q4_ROW(4) RVD_Q4_ROW(5) RVD_Q4_ROW(6) RVD_Q4_ROW(7)
        RVD_Q4_ROW(8) RVD_Q4_ROW(9) RVD_Q4_ROW(10) RVD_Q4_ROW(11)
        RVD_Q4_ROW(12) RVD_Q4_ROW(13) RVD_Q4_ROW(14) RVD_Q4_ROW(15)
        vfloat32m8_t sf = __riscv_vfcvt_f_x_v_f32m8(__riscv_vwadd_vv_i32m8(alo, ahi, vl), vl);
        sf = __riscv_vfadd_vf_f32m8(sf, dcrow[2 * g + 1], vl);
        vfloat32m8_t s = __riscv_vfmul_vf_f32m8(rvd_f16_to_f32(sp + g * N0 + c, vl), dcrow[2 * g], vl);
        acc = __riscv_vfmacc_vv_f32m8(acc, sf, s, vl);
      }
      __riscv_vse32_v_f32m8(y + m * N + col0 + c, acc, vl);
      c += vl;
    }
  }
}
