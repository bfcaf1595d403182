// rvdeploy's 4-bit matmul kernels (rvd_q4.c): the functions a q4 module's dispatches call, and the harness.
#ifndef RVD_Q4_H_
#define RVD_Q4_H_

#include <stddef.h>
#include <stdint.h>

// X [M, K] f32 (from x + xo) -> Q [M, K] int8 and dc [M, K/32, 2] = (d, -8 sum(q)) per block of 32.
void rvd_q8_quantize(const float* x, size_t xo, int8_t* q, size_t qo, float* dc, size_t dco, size_t M, size_t K);

// Y [M, N] f32, columns [panel N0, panel N0 + N0) of X W^T, from rvd_q8_quantize's Q and dc and the packed
// 4-bit weights w (panels of N0 columns, 16 x N0 bytes per block of 32) with their f16 scales ws [N/N0, K/32, N0].
void rvd_q4_matmul(const int8_t* q, size_t qo, const float* dc, size_t dco, const uint8_t* w, size_t wo,
                   const uint16_t* ws, size_t wso, float* y, size_t yo, size_t M, size_t K, size_t N, size_t N0,
                   size_t panel);

#endif  // RVD_Q4_H_
