/* A known workload for checking the instruction-counting plugin: argv[1] iterations of a 3-instruction loop
 * holding one RVV instruction (vadd.vv; addi; bnez), so two runs differ by exactly 3 x and 1 x the difference
 * of their iteration counts. Built static for rv64gcv by rvdeploy.qemu_cost.build_countloop. */
#include <stdlib.h>

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 0;
  if (n <= 0) return 0;
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
