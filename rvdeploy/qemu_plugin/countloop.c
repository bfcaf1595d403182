/* A known workload for checking the instruction-counting plugin: argv[1] iterations of a 3-instruction loop
 * holding one RVV instruction (vadd.vv; addi; bnez), so two runs differ by exactly 3 x and 1 x the difference
 * of their iteration counts. The vsetivli before the loop sets LMUL 1, or 4 when argv[2] is "m4" (the
 * LMUL-weighted count then grows by 4 per iteration). Built static for rv64gcv by
 * rvdeploy.qemu_cost.build_countloop. */
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 0;
  if (n <= 0) return 0;
  if (argc > 2 && strcmp(argv[2], "m4") == 0) {
    __asm__ volatile(
        "vsetivli zero, 4, e32, m4, ta, ma\n"
        "1:\n"
        "vadd.vv v4, v4, v8\n"
        "addi %0, %0, -1\n"
        "bnez %0, 1b\n"
        : "+r"(n)
        :
        : "memory");
    return 0;
  }
  __asm__ volatile(
      "vsetivli zero, 4, e32, m1, ta, ma\n"
      "1:\n"
      "vadd.vv v1, v1, v2\n"
      "addi %0, %0, -1\n"
      "bnez %0, 1b\n"
      : "+r"(n)
      :
      : "memory");
  return 0;
}
