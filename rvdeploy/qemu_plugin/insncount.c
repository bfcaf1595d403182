/* rvdeploy's QEMU TCG plugin (plugin API v2+, qemu >= 9): counts executed guest instructions and RVV vector
 * instructions (OP-V, and vector loads/stores: LOAD-FP/STORE-FP with width 0, 5, 6, 7), summed over vCPUs.
 * Counting is inline (per-vCPU scoreboard adds at translated-block entry), so it costs little time.
 * At exit it appends one line "insns=N vector=M" to the file given as outfile=PATH (else stderr).
 *   qemu-riscv64 -plugin ./libinsncount.so,outfile=counts.txt PROGRAM  (or QEMU_PLUGIN=lib.so,outfile=...) */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

typedef struct { uint64_t insns, vector; } Counts;
static struct qemu_plugin_scoreboard *counts;  /* one Counts per vCPU */
static qemu_plugin_u64 insns, vinsns;
static char outfile[4096];

static int is_vector(const uint8_t *b, size_t n) {
  if (n < 4 || (b[0] & 3) != 3) return 0;  /* compressed: never vector */
  uint32_t w = b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24;
  uint32_t opcode = w & 0x7f, width = (w >> 12) & 7;
  if (opcode == 0x57) return 1;                                  /* OP-V: arithmetic and vset{i}vl{i} */
  if (opcode == 0x07 || opcode == 0x27) return width == 0 || width >= 5;  /* vector load / store */
  return 0;
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  size_t n = qemu_plugin_tb_n_insns(tb);
  uint64_t nv = 0;
  for (size_t i = 0; i < n; i++) {
    uint8_t buf[4] = {0};
    struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
    size_t len = qemu_plugin_insn_data(insn, buf, sizeof buf);
    nv += is_vector(buf, len);
  }
  qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(tb, QEMU_PLUGIN_INLINE_ADD_U64, insns, n);
  if (nv) qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(tb, QEMU_PLUGIN_INLINE_ADD_U64, vinsns, nv);
}

static void at_exit(qemu_plugin_id_t id, void *p) {
  FILE *f = outfile[0] ? fopen(outfile, "a") : stderr;
  if (!f) f = stderr;
  fprintf(f, "insns=%" PRIu64 " vector=%" PRIu64 "\n", qemu_plugin_u64_sum(insns), qemu_plugin_u64_sum(vinsns));
  if (f != stderr) fclose(f);
  qemu_plugin_scoreboard_free(counts);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
  for (int i = 0; i < argc; i++) {
    if (strncmp(argv[i], "outfile=", 8) == 0) {
      snprintf(outfile, sizeof outfile, "%s", argv[i] + 8);
    } else {
      fprintf(stderr, "insncount: unknown argument %s\n", argv[i]);
      return -1;
    }
  }
  counts = qemu_plugin_scoreboard_new(sizeof(Counts));
  insns = qemu_plugin_scoreboard_u64_in_struct(counts, Counts, insns);
  vinsns = qemu_plugin_scoreboard_u64_in_struct(counts, Counts, vector);
  qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
  qemu_plugin_register_atexit_cb(id, at_exit, NULL);
  return 0;
}
