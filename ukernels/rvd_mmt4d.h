// rvdeploy's mmt4d microkernels: the entry point IREE's codegen calls, and the flag bits it passes.
//
// The codegen call (IREE 3.13, `--iree-llvmcpu-enable-ukernels=mmt4d`) is
//   call i32 @iree_uk_mmt4d(ptr lhs, i64 lhs_offset, i64 lhs_stride0, ptr rhs, i64 rhs_offset,
//                           i64 rhs_stride0, ptr out, i64 out_offset, i64 out_stride0, i64 M, i64 N,
//                           i64 K, i32 M0, i32 N0, i32 K0, i32 flags, ptr cpu_data)
// Offsets and strides are in elements of each operand (4-bit elements for s4/u4 operands). Layouts:
// lhs M x K x M0 x K0, rhs N x K x N0 x K0, out M x N x M0 x N0 (outer dims strided by *_stride0).
// Linked with `--iree-link-bitcode=riscv_64=...bc`, this definition replaces IREE's builtin one for
// every element type, so every type the compiler can send is handled (RVV tiles or portable C).
#ifndef RVD_MMT4D_H_
#define RVD_MMT4D_H_

#include <stdint.h>

// Flag bits: the values IREE 3.13's codegen emits (seen in *.codegen.ll: f32 with accumulate = 0x701).
#define RVD_FLAG_TYPE_MASK 0xFFu
#define RVD_TYPE_F32F32F32 0x01u
#define RVD_TYPE_S8S8S32 0x02u
#define RVD_TYPE_F16F16F32 0x03u
#define RVD_TYPE_F16F16F16 0x04u
#define RVD_TYPE_BF16BF16F32 0x05u
#define RVD_TYPE_BF16BF16BF16 0x06u
#define RVD_TYPE_S16S16S32 0x07u
#define RVD_TYPE_S16U4S32 0x08u
#define RVD_TYPE_S16S8S32 0x09u
#define RVD_TYPE_S8S4S32 0x0Au
#define RVD_FLAG_ACCUMULATE 0x100u
#define RVD_FLAG_ALLOW_GENERIC_FALLBACK 0x200u  // always honoured: every case has a fallback
#define RVD_FLAG_SKIP_INTERMEDIATE_ROUNDINGS 0x400u

int iree_uk_mmt4d(const void* lhs, int64_t lhs_offset, int64_t lhs_stride0, const void* rhs,
                  int64_t rhs_offset, int64_t rhs_stride0, void* out, int64_t out_offset,
                  int64_t out_stride0, int64_t M, int64_t N, int64_t K, int32_t M0, int32_t N0,
                  int32_t K0, uint32_t flags, const uint64_t* cpu_data);

#ifdef RVD_HARNESS  // internal in the bitcode build
// Which implementation iree_uk_mmt4d would use for these parameters (for the harness and the cost
// script): a static string naming the tile function, e.g. "rvdeploy_uk_mmt4d_tile_f32_1xN0x1_rvv_m8".
const char* rvd_mmt4d_kernel_name(int32_t M0, int32_t N0, int32_t K0, uint32_t flags);

// f16 / bf16 conversions used by the portable fallback (round to nearest even), exposed for the harness.
float rvd_f16_to_f32(uint16_t h);
uint16_t rvd_f32_to_f16(float f);
float rvd_bf16_to_f32(uint16_t h);
uint16_t rvd_f32_to_bf16(float f);
#endif

#endif  // RVD_MMT4D_H_
