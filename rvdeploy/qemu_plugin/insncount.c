/* rvdeploy's QEMU TCG plugin (plugin API v2+, qemu >= 9): counts executed guest instructions and RVV vector
 * instructions (OP-V, and vector loads/stores: LOAD-FP/STORE-FP with width 0, 5, 6, 7), summed over vCPUs,
 * and the vector instructions weighted by LMUL (in eighths, so mf8 = 1 ... m8 = 64; vset* count as m1).
 * Counting is inline (per-vCPU scoreboard adds at translated-block entry). LMUL comes from the immediate of
 * each executed vsetvli/vsetivli (an inline store of the current LMUL); vector instructions after a vset* in
 * the same block are weighted at translation time, the ones before it (loop bodies) by a block callback
 * that reads the current LMUL. vsetvl (register vtype) is counted as m1 and reported as `vsetvl=`.
 * At exit it appends one line "insns=N vector=M lmul8=W vsetvl=K" to outfile=PATH (else stderr).
 *   qemu-riscv64 -plugin ./libinsncount.so,outfile=counts.txt PROGRAM  (or QEMU_PLUGIN=lib.so,outfile=...)
 * With tbfile=PATH it also counts per translated block (a callback per executed block: slower) and appends to
 * PATH one block per process: "process insns=N" then one line per executed block,
 * "VADDR INSNS VECTOR EXECUTIONS LMUL8_TOTAL BYTES" (hex vaddr; BYTES: up to its first 16 code bytes, hex),
 * from which rvdeploy.dispatch_cost attributes the counts to the code loaded at each address. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

typedef struct { uint64_t insns, vector, lmul8, cur_lmul8, vsetvl; } Counts;
static struct qemu_plugin_scoreboard *counts;  /* one Counts per vCPU */
static qemu_plugin_u64 insns, vinsns, lmul8, cur_lmul8, vsetvl;
static char outfile[4096], tbfile[4096];

/* tbfile mode: one record per translation (a block translated twice has two records: the sums stay exact) */
typedef struct {
  uint64_t vaddr, weighted, execs, lmul8_dyn;
  uint32_t n, nv, leading, nbytes;
  uint8_t bytes[16];
} TbRec;
static GPtrArray *records;
static GMutex records_lock;
static const uint64_t LMUL8[8] = {8, 16, 32, 64, 8 /* reserved */, 1, 2, 4};  /* by vtype.vlmul */

static uint32_t word(const uint8_t *b) { return b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24; }

static int is_vector(const uint8_t *b, size_t n) {
  if (n < 4 || (b[0] & 3) != 3) return 0;  /* compressed: never vector */
  uint32_t w = word(b), opcode = w & 0x7f, width = (w >> 12) & 7;
  if (opcode == 0x57) return 1;                                  /* OP-V: arithmetic and vset{i}vl{i} */
  if (opcode == 0x07 || opcode == 0x27) return width == 0 || width >= 5;  /* vector load / store */
  return 0;
}

/* 0: not a vset; 1: vsetvli/vsetivli (LMUL in *l8); 2: vsetvl (vtype from a register) */
static int vset_kind(const uint8_t *b, size_t n, uint64_t *l8) {
  if (n < 4) return 0;
  uint32_t w = word(b);
  if ((w & 0x7f) != 0x57 || ((w >> 12) & 7) != 7) return 0;
  if ((w >> 25) == 0x40) return 2;
  *l8 = LMUL8[(w >> 20) & 7];
  return 1;
}

static void leading_cb(unsigned int vcpu, void *n) {  /* vector insns before the block's first vset* */
  uint64_t cur = qemu_plugin_u64_get(cur_lmul8, vcpu);
  qemu_plugin_u64_add(lmul8, vcpu, (uint64_t)(uintptr_t)n * (cur ? cur : 8));
}

static void record_cb(unsigned int vcpu, void *udata) {
  TbRec *r = udata;
  __atomic_add_fetch(&r->execs, 1, __ATOMIC_RELAXED);
  if (r->leading) {  /* as leading_cb: weighted by the LMUL in force when the block starts */
    uint64_t cur = qemu_plugin_u64_get(cur_lmul8, vcpu);
    __atomic_add_fetch(&r->lmul8_dyn, r->leading * (cur ? cur : 8), __ATOMIC_RELAXED);
  }
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  size_t n = qemu_plugin_tb_n_insns(tb);
  uint64_t nv = 0, weighted = 0, leading = 0, known = 0, l8 = 8, nvsetvl = 0;
  TbRec *rec = tbfile[0] ? g_new0(TbRec, 1) : NULL;
  int more_bytes = 1;  /* the recorded bytes are contiguous: they stop at the first instruction that does not fit */
  for (size_t i = 0; i < n; i++) {
    uint8_t buf[4] = {0};
    struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
    size_t len = qemu_plugin_insn_data(insn, buf, sizeof buf);
    if (rec && more_bytes && rec->nbytes + len <= sizeof rec->bytes) {
      memcpy(rec->bytes + rec->nbytes, buf, len);
      rec->nbytes += len;
    } else {
      more_bytes = 0;
    }
    if (!is_vector(buf, len)) continue;
    nv++;
    uint64_t set;
    int kind = vset_kind(buf, len, &set);
    if (kind) {
      weighted += 8;
      l8 = kind == 1 ? set : 8;
      nvsetvl += kind == 2;
      known = 1;
      qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(insn, QEMU_PLUGIN_INLINE_STORE_U64, cur_lmul8, l8);
    } else if (known) {
      weighted += l8;
    } else {
      leading++;
    }
  }
  qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(tb, QEMU_PLUGIN_INLINE_ADD_U64, insns, n);
  if (nv) qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(tb, QEMU_PLUGIN_INLINE_ADD_U64, vinsns, nv);
  if (weighted) qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(tb, QEMU_PLUGIN_INLINE_ADD_U64, lmul8, weighted);
  if (nvsetvl) qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(tb, QEMU_PLUGIN_INLINE_ADD_U64, vsetvl, nvsetvl);
  if (leading)
    qemu_plugin_register_vcpu_tb_exec_cb(tb, leading_cb, QEMU_PLUGIN_CB_NO_REGS, (void *)(uintptr_t)leading);
  if (rec) {
    rec->vaddr = qemu_plugin_tb_vaddr(tb);
    rec->n = n, rec->nv = nv, rec->weighted = weighted, rec->leading = leading;
    qemu_plugin_register_vcpu_tb_exec_cb(tb, record_cb, QEMU_PLUGIN_CB_NO_REGS, rec);
    g_mutex_lock(&records_lock);
    g_ptr_array_add(records, rec);
    g_mutex_unlock(&records_lock);
  }
}

static void write_records(void) {
  FILE *f = fopen(tbfile, "a");
  if (!f) {
    fprintf(stderr, "insncount: cannot write %s\n", tbfile);
    return;
  }
  fprintf(f, "process insns=%" PRIu64 "\n", qemu_plugin_u64_sum(insns));
  for (guint i = 0; i < records->len; i++) {
    TbRec *r = g_ptr_array_index(records, i);
    if (!r->execs) continue;
    fprintf(f, "%" PRIx64 " %u %u %" PRIu64 " %" PRIu64 " ", r->vaddr, r->n, r->nv, r->execs,
            r->execs * r->weighted + r->lmul8_dyn);
    for (uint32_t j = 0; j < r->nbytes; j++) fprintf(f, "%02x", r->bytes[j]);
    fputc('\n', f);
  }
  fclose(f);
}

static void at_exit(qemu_plugin_id_t id, void *p) {
  FILE *f = outfile[0] ? fopen(outfile, "a") : stderr;
  if (!f) f = stderr;
  fprintf(f, "insns=%" PRIu64 " vector=%" PRIu64 " lmul8=%" PRIu64 " vsetvl=%" PRIu64 "\n",
          qemu_plugin_u64_sum(insns), qemu_plugin_u64_sum(vinsns), qemu_plugin_u64_sum(lmul8),
          qemu_plugin_u64_sum(vsetvl));
  if (f != stderr) fclose(f);
  if (records) write_records();
  qemu_plugin_scoreboard_free(counts);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
  for (int i = 0; i < argc; i++) {
    if (strncmp(argv[i], "outfile=", 8) == 0) {
      snprintf(outfile, sizeof outfile, "%s", argv[i] + 8);
    } else if (strncmp(argv[i], "tbfile=", 7) == 0) {
      snprintf(tbfile, sizeof tbfile, "%s", argv[i] + 7);
      records = g_ptr_array_new_with_free_func(g_free);
    } else {
      fprintf(stderr, "insncount: unknown argument %s\n", argv[i]);
      return -1;
    }
  }
  counts = qemu_plugin_scoreboard_new(sizeof(Counts));
  insns = qemu_plugin_scoreboard_u64_in_struct(counts, Counts, insns);
  vinsns = qemu_plugin_scoreboard_u64_in_struct(counts, Counts, vector);
  lmul8 = qemu_plugin_scoreboard_u64_in_struct(counts, Counts, lmul8);
  cur_lmul8 = qemu_plugin_scoreboard_u64_in_struct(counts, Counts, cur_lmul8);
  vsetvl = qemu_plugin_scoreboard_u64_in_struct(counts, Counts, vsetvl);
  qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
  qemu_plugin_register_atexit_cb(id, at_exit, NULL);
  return 0;
}
