// Standalone check of rvd_mmt4d.c and rvd_q4.c against a scalar reference, on random data (fixed seeds).
//
//   clang-19 --target=riscv64-linux-gnu -march=rv64gcv_zvl256b -mabi=lp64d -O2 -fuse-ld=lld -static -DRVD_HARNESS \
//       ukernels/harness.c ukernels/rvd_mmt4d.c ukernels/rvd_q4.c -lm -o harness && qemu-riscv64 -cpu rv64,v=true,vlen=256,... ./harness
//
// Cases: every element type IREE's mmt4d ukernel can receive, M0 in {1..8}, the N0 of rvdeploy's tiles at
// this VLEN (VLEN/4) and of IREE's (VLEN/8) plus odd ones, K0 = 1 and K0 > 1 (the portable fallback),
// K = 1, small and large K (2048, 8192 for the f32 tiles rvdeploy uses), accumulate on and off, M, N > 1
// with padded outer strides and non-zero offsets, and K = 0.
// Integers must match exactly. Floats: (a) integer-valued data, whose sums are exact in the output type,
// must match exactly; (b) real-valued data must satisfy |got - ref| <= (K*K0 + 2) * eps(out) * sum|l*r|
// + eps(out) * |acc_in| (the classic bound for recursive summation; ref computed in double).
// Prints one line per case and `harness: N cases, F failures`; exit status 1 on any failure.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rvd_mmt4d.h"
#include "rvd_q4.h"

static uint64_t rng_state;
static uint32_t rnd(void) {
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(rng_state >> 33);
}

enum { F32, F16, BF16, S8, S16, S32, S4, U4 };
typedef struct { const char* name; uint32_t flag; int lhs, rhs, out; } type_case;
static const type_case TYPES[] = {
    {"f32f32f32", RVD_TYPE_F32F32F32, F32, F32, F32},
    {"s8s8s32", RVD_TYPE_S8S8S32, S8, S8, S32},
    {"f16f16f32", RVD_TYPE_F16F16F32, F16, F16, F32},
    {"f16f16f16", RVD_TYPE_F16F16F16, F16, F16, F16},
    {"bf16bf16f32", RVD_TYPE_BF16BF16F32, BF16, BF16, F32},
    {"bf16bf16bf16", RVD_TYPE_BF16BF16BF16, BF16, BF16, BF16},
    {"s16s16s32", RVD_TYPE_S16S16S32, S16, S16, S32},
    {"s16u4s32", RVD_TYPE_S16U4S32, S16, U4, S32},
    {"s16s8s32", RVD_TYPE_S16S8S32, S16, S8, S32},
    {"s8s4s32", RVD_TYPE_S8S4S32, S8, S4, S32},
};

static int bits(int t) { return t == F32 || t == S32 ? 32 : t == F16 || t == BF16 || t == S16 ? 16 : t == S8 ? 8 : 4; }
static int is_float(int t) { return t <= BF16; }

// element get/set in a typed buffer (4-bit: two per byte, low nibble first)
static double get(const void* b, int t, int64_t e) {
  switch (t) {
    case F32: return ((const float*)b)[e];
    case F16: return rvd_f16_to_f32(((const uint16_t*)b)[e]);
    case BF16: return rvd_bf16_to_f32(((const uint16_t*)b)[e]);
    case S8: return ((const int8_t*)b)[e];
    case S16: return ((const int16_t*)b)[e];
    case S32: return ((const int32_t*)b)[e];
    case S4: { int v = (((const uint8_t*)b)[e >> 1] >> ((e & 1) * 4)) & 0xF; return v >= 8 ? v - 16 : v; }
    default: return (((const uint8_t*)b)[e >> 1] >> ((e & 1) * 4)) & 0xF;
  }
}
static void set(void* b, int t, int64_t e, double v) {
  switch (t) {
    case F32: ((float*)b)[e] = (float)v; break;
    case F16: ((uint16_t*)b)[e] = rvd_f32_to_f16((float)v); break;
    case BF16: ((uint16_t*)b)[e] = rvd_f32_to_bf16((float)v); break;
    case S8: ((int8_t*)b)[e] = (int8_t)v; break;
    case S16: ((int16_t*)b)[e] = (int16_t)v; break;
    case S32: ((int32_t*)b)[e] = (int32_t)v; break;
    default: {
      uint8_t* p = (uint8_t*)b + (e >> 1);
      int sh = (e & 1) * 4;
      *p = (uint8_t)((*p & ~(0xF << sh)) | (((int)v & 0xF) << sh));
    }
  }
}
static int extreme_s8;  // s8 operands all -128: the largest products and sums the int8 kernels can see

static double random_value(int t, int integer_valued) {
  switch (t) {
    case S8: return extreme_s8 ? -128 : (int)(rnd() % 256) - 128;
    case S16: return (int)(rnd() % 601) - 300;  // sums stay inside int32 at K * K0 <= 8192
    case S32: return (int)(rnd() % 2001) - 1000;
    case S4: return (int)(rnd() % 16) - 8;
    case U4: return rnd() % 16;
    default:
      if (integer_valued) return (int)(rnd() % 9) - 4;
      return ((double)rnd() / 4294967296.0) * 2.0 - 1.0;
  }
}

static int n_cases, n_fail;

// Runs one mmt4d: M x N outer tiles, M0 x N0 x K0 inner, with padded strides and offsets.
static void run_case(const type_case* tc, int64_t M, int64_t N, int64_t K, int M0, int N0, int K0,
                     int accumulate, int integer_valued, uint64_t seed) {
  rng_state = seed;
  const int64_t lhs_off = 2 * M0 * K0, rhs_off = 4 * N0 * K0, out_off = 2 * M0 * N0;  // element offsets
  const int64_t lhs_stride = K * M0 * K0 + 2 * M0 * K0;  // padded: rows of tiles are not contiguous
  const int64_t rhs_stride = K * N0 * K0 + 2 * N0 * K0;
  const int64_t out_stride = N * M0 * N0 + M0 * N0;
  const int64_t lhs_n = lhs_off + M * lhs_stride, rhs_n = rhs_off + N * rhs_stride;
  const int64_t out_n = out_off + M * out_stride;
  void* lhs = calloc((size_t)(lhs_n * bits(tc->lhs) / 8 + 8), 1);
  void* rhs = calloc((size_t)(rhs_n * bits(tc->rhs) / 8 + 8), 1);
  void* out = calloc((size_t)(out_n * bits(tc->out) / 8 + 8), 1);
  double* ref = calloc((size_t)out_n, sizeof(double));
  double* mag = calloc((size_t)out_n, sizeof(double));
  for (int64_t e = 0; e < lhs_n; ++e) set(lhs, tc->lhs, e, random_value(tc->lhs, integer_valued));
  for (int64_t e = 0; e < rhs_n; ++e) set(rhs, tc->rhs, e, random_value(tc->rhs, integer_valued));
  for (int64_t e = 0; e < out_n; ++e) set(out, tc->out, e, random_value(tc->out, 1));
  // reference (double / exact integer arithmetic) for every output element inside the tiles
  for (int64_t e = 0; e < out_n; ++e) ref[e] = get(out, tc->out, e);  // untouched elements stay
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j)
      for (int i0 = 0; i0 < M0; ++i0)
        for (int j0 = 0; j0 < N0; ++j0) {
          int64_t o = out_off + i * out_stride + j * M0 * N0 + i0 * N0 + j0;
          double acc = accumulate ? get(out, tc->out, o) : 0.0, m = fabs(acc) * 0.5;
          for (int64_t k = 0; k < K; ++k)
            for (int k0 = 0; k0 < K0; ++k0) {
              double p = get(lhs, tc->lhs, lhs_off + i * lhs_stride + (k * M0 + i0) * K0 + k0) *
                         get(rhs, tc->rhs, rhs_off + j * rhs_stride + (k * N0 + j0) * K0 + k0);
              acc += p;
              m += fabs(p);
            }
          ref[o] = acc;
          mag[o] = m;
        }
  uint32_t flags = tc->flag | 0x200u | 0x400u | (accumulate ? RVD_FLAG_ACCUMULATE : 0);
  if (tc->out == F16 || tc->out == BF16) flags &= ~0x400u;  // f16/bf16 outputs: also the rounding path
  iree_uk_mmt4d(lhs, lhs_off, lhs_stride, rhs, rhs_off, rhs_stride, out, out_off, out_stride, M, N, K, M0,
                N0, K0, flags, NULL);
  double eps = tc->out == F32 ? ldexp(1, -24) : tc->out == F16 ? ldexp(1, -11) : tc->out == BF16 ? ldexp(1, -8) : 0;
  int exact = !is_float(tc->out) || (integer_valued && tc->out == F32);
  int64_t bad = 0, first_bad = -1;
  double worst = 0;
  for (int64_t e = 0; e < out_n; ++e) {
    double got = get(out, tc->out, e), want = ref[e];
    double tol = exact ? 0.0 : (double)(K * K0 + 2) * eps * mag[e] + eps * fabs(want);
    double err = fabs(got - want);
    if (!(err <= tol)) {
      if (first_bad < 0) first_bad = e;
      ++bad;
    }
    if (err > worst) worst = err;
  }
  ++n_cases;
  const char* kernel = rvd_mmt4d_kernel_name(M0, N0, K0, flags);
  printf("%s %-13s M=%lld N=%lld K=%-5lld tile=%dx%dx%d acc=%d %s %-8s max_err=%.3g  %s\n", bad ? "FAIL" : "ok  ",
         tc->name, (long long)M, (long long)N, (long long)K, M0, N0, K0, accumulate,
         integer_valued ? "ints" : "real", exact ? "exact" : "tol", worst, kernel);
  if (bad) {
    ++n_fail;
    printf("     %lld wrong elements, first at %lld: got %.9g want %.9g\n", (long long)bad, (long long)first_bad,
           get(out, tc->out, first_bad), ref[first_bad]);
  }
  free(lhs); free(rhs); free(out); free(ref); free(mag);
}

static int vlen_bits(void) {
#ifdef __riscv_v_min_vlen
  unsigned long vlenb;
  __asm__ volatile("csrr %0, vlenb" : "=r"(vlenb));
  return (int)vlenb * 8;
#else
  return 0;
#endif
}

// 4-bit kernels (rvd_q4.c): activation quantization must match a scalar Q8_0 reference exactly (same f32
// operations: d = amax / 127, q = round-to-even(x / d as x * (1 / d))); the matmul against a double reference
// of the same integer blocks: |got - ref| <= (G + 4) * eps(f32) * sum_g |d_g s_g sum_k a q| (a few f32
// roundings per block, then G additions). `extreme`: all activations +max and all nibbles 15 or 0 (the int16
// accumulators' worst case), else random x and nibbles, scales random f16 of both signs incl. subnormals.
static void run_q4_case(int64_t M, int64_t N, int64_t K, int64_t N0, int extreme, int seed) {
  rng_state = (uint64_t)seed * 977;
  const int64_t G = K / 32, N1 = (N + N0 - 1) / N0;
  float* x = malloc(sizeof(float) * M * K);
  int8_t* q = malloc(M * K + 1);
  float* dc = malloc(sizeof(float) * (M * G * 2 + 1));
  uint8_t* nib = malloc(N * K);           // unpacked nibbles 0..15, [N, K]
  uint16_t* sc = malloc(2 * N * G);        // f16 scales [N, G]
  uint8_t* w = calloc(N1 * G * 16 * N0 + 3, 1);
  uint16_t* ws = calloc(N1 * G * N0 + 5, 2);
  float* y = malloc(sizeof(float) * (M * N + 4));
  for (int64_t i = 0; i < M * K; ++i) x[i] = extreme ? 3.0f : ((float)(rnd() % 20001) - 10000.0f) * 1e-3f * ((i % 7) + 1);
  if (!extreme && M * K > 40) for (int64_t i = 0; i < 32; ++i) x[32 + i] = 0.0f;  // an all-zero block (d = 0)
  for (int64_t i = 0; i < N * K; ++i) nib[i] = extreme ? ((i / K) % 2 ? 15 : 0) : rnd() % 16;
  for (int64_t i = 0; i < N * G; ++i) {
    uint16_t h = (uint16_t)(rnd() % 0x7800u);  // finite f16, subnormals included
    sc[i] = (uint16_t)(h | (rnd() % 2 ? 0x8000u : 0));
  }
  for (int64_t n = 0; n < N; ++n)  // the layout rvdeploy/layout.py pack_q4_panels writes (w, ws offset by 3, 5)
    for (int64_t g = 0; g < G; ++g) {
      ws[5 + ((n / N0) * G + g) * N0 + n % N0] = sc[n * G + g];
      for (int r = 0; r < 16; ++r)
        w[3 + (((n / N0) * G + g) * 16 + r) * N0 + n % N0] =
            (uint8_t)(nib[n * K + g * 32 + r] | nib[n * K + g * 32 + 16 + r] << 4);
    }
  rvd_q8_quantize(x, 0, q, 1, dc, 1, (size_t)M, (size_t)K);
  int64_t bad = 0;
  double max_err = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < G; ++g) {
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = fmaxf(amax, fabsf(x[m * K + g * 32 + i]));
      float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
      int sum = 0;
      for (int i = 0; i < 32; ++i) {
        int qi = (int)rintf(x[m * K + g * 32 + i] * id);
        sum += qi;
        if (q[1 + m * K + g * 32 + i] != qi) ++bad;
      }
      if (dc[1 + (m * G + g) * 2] != d || dc[1 + (m * G + g) * 2 + 1] != (float)(-8 * sum)) ++bad;
    }
  for (int64_t p = 0; p < N1; ++p)
    rvd_q4_matmul(q, 1, dc, 1, w, 3, ws, 5, y, 4, (size_t)M, (size_t)K, (size_t)N, (size_t)N0, (size_t)p);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double ref = 0, mag = 0;
      for (int64_t g = 0; g < G; ++g) {
        long isum = 0;
        for (int i = 0; i < 32; ++i) isum += (long)q[1 + m * K + g * 32 + i] * (nib[n * K + g * 32 + i] - 8);
        double t = (double)dc[1 + (m * G + g) * 2] * rvd_f16_to_f32(sc[n * G + g]) * (double)isum;
        ref += t;
        mag += fabs(t);
      }
      double err = fabs((double)y[4 + m * N + n] - ref);
      if (err > max_err) max_err = err;
      if (err > (G + 4) * 1.1920929e-7 * mag) ++bad;
    }
  ++n_cases;
  if (bad) ++n_fail;
  printf("%s q4 M=%lld N=%lld K=%-5lld N0=%lld%s max_err=%.3g  rvd_q4_matmul\n", bad ? "FAIL" : "ok  ", (long long)M,
         (long long)N, (long long)K, (long long)N0, extreme ? " extreme" : "", max_err);
  free(x), free(q), free(dc), free(nib), free(sc), free(w), free(ws), free(y);
}

int main(int argc, char** argv) {
  int quick = argc > 1 && !strcmp(argv[1], "--quick");
  int vlen = vlen_bits();
  printf("harness: VLEN %d\n", vlen);
  // conversion sanity (the fallback's f16/bf16 rounding)
  struct { float f; uint16_t h; } f16c[] = {{1.0f, 0x3C00}, {-2.0f, 0xC000}, {65504.0f, 0x7BFF}, {1e5f, 0x7C00},
                                             {5.9604645e-8f, 0x0001}, {1.0009765625f, 0x3C01}, {1.00048828125f, 0x3C00},
                                             {1.00146484375f, 0x3C02}, {0.0f, 0x0000}};
  for (unsigned i = 0; i < sizeof f16c / sizeof f16c[0]; ++i) {
    uint16_t h = rvd_f32_to_f16(f16c[i].f);
    ++n_cases;
    if (h != f16c[i].h || (f16c[i].h != 0x7C00 && rvd_f16_to_f32(h) != (float)get(&h, F16, 0))) {
      ++n_fail;
      printf("FAIL f32->f16 %g: got 0x%04x want 0x%04x\n", f16c[i].f, h, f16c[i].h);
    }
  }
  if (rvd_f32_to_bf16(1.00390625f) != 0x3F80 || rvd_f32_to_bf16(1.01171875f) != 0x3F82 || rvd_bf16_to_f32(0x3F80) != 1.0f) {
    ++n_fail;
    printf("FAIL f32<->bf16 rounding\n");
  }
  ++n_cases;

  const int nr = vlen ? vlen / 4 : 64, nu = vlen ? vlen / 8 : 32;  // rvdeploy's N0 and IREE's N0 for f32
  int seed = 1;
  // f32: the tiles rvdeploy uses (decode 1 x VLEN/4 x 1, prefill 7 and 3 x VLEN/4 x 1) at Llama depths
  for (int acc = 0; acc <= 1; ++acc) {
    int64_t ks[] = {1, 2, 3, 5, 64, 2048, 8192};
    for (unsigned i = 0; i < sizeof ks / sizeof ks[0]; ++i) {
      if (quick && ks[i] > 64) continue;
      run_case(&TYPES[0], 1, ks[i] >= 2048 ? 2 : 3, ks[i], 1, nr, 1, acc, 1, seed++);
      run_case(&TYPES[0], 1, ks[i] >= 2048 ? 2 : 3, ks[i], 1, nr, 1, acc, 0, seed++);
      run_case(&TYPES[0], 2, 2, ks[i] > 2048 ? 2048 : ks[i], 7, nr, 1, acc, 1, seed++);
      run_case(&TYPES[0], 1, 2, ks[i] > 2048 ? 2048 : ks[i], 7, nr, 1, acc, 0, seed++);
      run_case(&TYPES[0], 2, 2, ks[i] > 2048 ? 2048 : ks[i], 3, nr, 1, acc, 1, seed++);
      run_case(&TYPES[0], 1, 2, ks[i] > 2048 ? 2048 : ks[i], 3, nr, 1, acc, 0, seed++);
    }
  }
  // f32: every M0 the kernels handle (and 8: fallback), IREE's N0 and odd N0s (column chunking)
  for (int m0 = 1; m0 <= 8; ++m0) {
    int n0s[] = {nr, nu, 1, 7, nr + 5, 3 * nr};
    for (unsigned i = 0; i < sizeof n0s / sizeof n0s[0]; ++i)
      for (int acc = 0; acc <= 1; ++acc) {
        run_case(&TYPES[0], 2, 3, 37, m0, n0s[i], 1, acc, 1, seed++);
        run_case(&TYPES[0], 1, 2, 37, m0, n0s[i], 1, acc, 0, seed++);
      }
  }
  // every type: RVV integer tiles (s16 x s16, s16 x s8; K0 = 1) and the fallback (K0 > 1, other types)
  for (unsigned t = 0; t < sizeof TYPES / sizeof TYPES[0]; ++t) {
    const type_case* tc = &TYPES[t];
    int four_bit = tc->rhs == S4 || tc->rhs == U4;
    int k0s[] = {1, 2, 4};
    for (unsigned a = 0; a < 3; ++a) {
      int k0 = k0s[a];
      if (four_bit && k0 == 1) continue;  // 4-bit operands come with an even K0
      int m0s[] = {1, 2, 7, 8};
      for (unsigned b = 0; b < 4; ++b) {
        int m0 = m0s[b];
        int n0 = (tc->out == S32 && k0 == 1) ? nu : 8;
        for (int acc = 0; acc <= 1; ++acc) {
          int64_t ks[] = {1, 17, 67};
          for (unsigned c = 0; c < 3; ++c) {
            if (quick && ks[c] > 17) continue;
            if (is_float(tc->out)) run_case(tc, 2, 2, ks[c], m0, n0, k0, acc, 1, seed++);
            run_case(tc, 2, 2, ks[c], m0, n0, k0, acc, 0, seed++);
          }
        }
      }
    }
  }
  // integer RVV tiles at Llama depth and odd N0
  for (int acc = 0; acc <= 1; ++acc) {
    run_case(&TYPES[6], 1, 2, quick ? 64 : 2048, 1, nu, 1, acc, 0, seed++);
    run_case(&TYPES[8], 1, 2, quick ? 64 : 2048, 7, nu, 1, acc, 0, seed++);
    run_case(&TYPES[6], 2, 2, 19, 3, nu + 3, 1, acc, 0, seed++);
    run_case(&TYPES[8], 2, 2, 19, 5, 2 * nu + 1, 1, acc, 0, seed++);
  }
  // s8 x s8 -> s32, the tiles rvdeploy's int8 builds use (decode 1 x VLEN/4 x 1, prefill 7 x VLEN/4 x 1) at Llama
  // depths, every M0 with rvdeploy's, IREE's and odd N0s, and the extremes (-128 x -128 over 8192 steps)
  for (int acc = 0; acc <= 1; ++acc) {
    int64_t ks[] = {1, 3, 5, 64, 2048, 8192};
    for (unsigned i = 0; i < sizeof ks / sizeof ks[0]; ++i) {
      if (quick && ks[i] > 64) continue;
      run_case(&TYPES[1], 1, ks[i] >= 2048 ? 2 : 3, ks[i], 1, nr, 1, acc, 0, seed++);
      run_case(&TYPES[1], 2, 2, ks[i] > 2048 ? 2048 : ks[i], 7, nr, 1, acc, 0, seed++);
    }
    for (int m0 = 1; m0 <= 8; ++m0) {
      int n0s[] = {nr, nu, 1, 7, nr + 5, 3 * nr};
      for (unsigned i = 0; i < sizeof n0s / sizeof n0s[0]; ++i)
        run_case(&TYPES[1], 2, 3, 37, m0, n0s[i], 1, acc, 0, seed++);
    }
  }
  extreme_s8 = 1;
  run_case(&TYPES[1], 1, 2, quick ? 64 : 8192, 1, nr, 1, 0, 0, seed++);
  run_case(&TYPES[1], 1, 2, quick ? 64 : 2048, 7, nr, 1, 1, 0, seed++);
  extreme_s8 = 0;
  // K = 0: clears the output unless accumulating
  run_case(&TYPES[0], 2, 2, 0, 7, nr, 1, 0, 1, seed++);
  run_case(&TYPES[0], 2, 2, 0, 7, nr, 1, 1, 1, seed++);
  run_case(&TYPES[6], 2, 2, 0, 1, nu, 1, 0, 0, seed++);
  // 4-bit kernels: rvdeploy's panel N0 = VLEN/4 (one e8m2 vector), decode and prefill rows, Llama depths,
  // N not a multiple of N0 (last panel partial), N0 wider than a vector (column chunks), worst-case sums
  int seed4 = 1000;
  run_q4_case(1, nr, 32, nr, 0, seed4++);
  run_q4_case(1, 3 * nr, 512, nr, 0, seed4++);
  run_q4_case(1, 2 * nr, quick ? 64 : 8192, nr, 0, seed4++);
  run_q4_case(5, nr + 9, 1408, nr, 0, seed4++);
  run_q4_case(3, 2 * nr + 5, 96, 2 * nr, 0, seed4++);
  run_q4_case(2, nr, quick ? 64 : 2048, nr, 1, seed4++);
  printf("harness: %d cases, %d failures\n", n_cases, n_fail);
  return n_fail ? 1 : 0;
}
