/* rvdeploy-probe: what this RISC-V Linux board can run, as JSON (default) or key=value lines (--env, read by
 * the bundle's launcher.sh, which has no JSON parser).
 *
 * Built by rvdeploy with clang for rv64gc only (no V): the probe must run on every riscv64 board, including
 * the ones whose mismatch it reports. It executes no vector instruction; `vlenb` is read only after hwprobe
 * (or HWCAP when the kernel predates hwprobe) said V is present, so a board without V never sees a SIGILL.
 */
#define _GNU_SOURCE /* CPU_COUNT */
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/utsname.h>
#include <unistd.h>

/* Linux uapi asm/hwprobe.h (6.4+); Debian 12's cross headers are 6.1 and lack it, so the values are here. */
#define NR_RISCV_HWPROBE 258
#define KEY_MVENDORID 0
#define KEY_MARCHID 1
#define KEY_MIMPID 2
#define KEY_BASE_BEHAVIOR 3
#define BASE_BEHAVIOR_IMA 1ULL
#define KEY_IMA_EXT_0 4

struct riscv_hwprobe {
  int64_t key;
  uint64_t value;
};

/* IMA_EXT_0 bit -> extension name, in the kernel's bit order (bits 0..35, Linux 6.4-6.10). Names are the
 * lower-case ISA spelling, the same as a target's cpu_features without the '+'. */
static const char *const ima_ext_0[] = {
    "fd", "c", "v", "zba", "zbb", "zbs", "zicboz", "zbc", "zbkb", "zbkc", "zbkx", "zknd", "zkne", "zknh",
    "zksed", "zksh", "zkt", "zvbb", "zvbc", "zvkb", "zvkg", "zvkned", "zvknha", "zvknhb", "zvksed", "zvksh",
    "zvkt", "zfh", "zfhmin", "zihintntl", "zvfh", "zvfhmin", "zfa", "ztso", "zacas", "zicond",
};
#define N_EXT (sizeof ima_ext_0 / sizeof ima_ext_0[0])

static unsigned long read_vlenb(void) {
  unsigned long v;
  /* CSR 0xc22 = vlenb, by number so the probe assembles for rv64gc */
  __asm__ volatile("csrr %0, 0xc22" : "=r"(v));
  return v;
}

static void meminfo(unsigned long long *total, unsigned long long *avail) {
  struct sysinfo si;
  *total = *avail = 0;
  if (sysinfo(&si) == 0) { /* a syscall: works in a chroot without /proc */
    *total = (unsigned long long)si.totalram * si.mem_unit;
    *avail = (unsigned long long)(si.freeram + si.bufferram) * si.mem_unit;
  }
  FILE *f = fopen("/proc/meminfo", "r"); /* MemAvailable counts reclaimable cache: better when present */
  if (f) {
    char line[256];
    unsigned long long kb;
    while (fgets(line, sizeof line, f))
      if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) *avail = kb * 1024ULL;
    fclose(f);
  }
}

int main(int argc, char **argv) {
  int env = argc > 1 && strcmp(argv[1], "--env") == 0;
  struct riscv_hwprobe pairs[5] = {
      {KEY_MVENDORID, 0}, {KEY_MARCHID, 0}, {KEY_MIMPID, 0}, {KEY_BASE_BEHAVIOR, 0}, {KEY_IMA_EXT_0, 0}};
  long rc = syscall(NR_RISCV_HWPROBE, pairs, 5, 0, NULL, 0);
  int hwprobe = rc == 0;
  unsigned long hwcap = getauxval(AT_HWCAP);

  /* extension list: i, m, a from BASE_BEHAVIOR_IMA (or HWCAP letters), the rest from IMA_EXT_0 */
  const char *exts[64];
  int n = 0;
  if (hwprobe) {
    if (pairs[3].value & BASE_BEHAVIOR_IMA) { exts[n++] = "i"; exts[n++] = "m"; exts[n++] = "a"; }
    for (unsigned b = 0; b < N_EXT; b++) {
      if (!(pairs[4].value & (1ULL << b))) continue;
      if (b == 0) { exts[n++] = "f"; exts[n++] = "d"; } else exts[n++] = ima_ext_0[b];
    }
  } else {
    static const char letters[] = "imafdcv";
    static const char *names[] = {"i", "m", "a", "f", "d", "c", "v"};
    for (int i = 0; letters[i]; i++)
      if (hwcap & (1UL << (letters[i] - 'a'))) exts[n++] = names[i];
  }
  int has_v = 0;
  for (int i = 0; i < n; i++) has_v |= strcmp(exts[i], "v") == 0;
  unsigned long vlen = has_v ? read_vlenb() * 8 : 0;

  cpu_set_t set;
  int cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : (int)sysconf(_SC_NPROCESSORS_ONLN);
  unsigned long long mem_total, mem_avail;
  meminfo(&mem_total, &mem_avail);
  struct utsname u;
  uname(&u);

  if (env) {
    /* one key per line; the launcher reads these with a case statement */
    printf("arch=riscv64\nvlen=%lu\nhwprobe=%d\nextensions=", vlen, hwprobe);
    for (int i = 0; i < n; i++) printf("%s%s", i ? " " : "", exts[i]);
    /* what this probe can see: a required extension outside this list cannot be checked here */
    printf("\ndetectable=i m a f d %s", hwprobe ? "" : "c v");
    if (hwprobe)
      for (unsigned b = 1; b < N_EXT; b++) printf("%s%s", b > 1 ? " " : "", ima_ext_0[b]);
    printf("\ncpus=%d\nmem_total=%llu\n", cpus, mem_total);
    return 0;
  }
  printf("{\n  \"arch\": \"riscv64\",\n  \"kernel\": \"%s\",\n  \"hwprobe\": %s,\n", u.release,
         hwprobe ? "true" : "false");
  printf("  \"vector\": %s,\n  \"vlen\": %lu,\n  \"extensions\": [", has_v ? "true" : "false", vlen);
  for (int i = 0; i < n; i++) printf("%s\"%s\"", i ? ", " : "", exts[i]);
  printf("],\n  \"extensions_source\": \"%s\",\n", hwprobe ? "riscv_hwprobe" : "hwcap");
  if (hwprobe)
    printf("  \"mvendorid\": %llu,\n  \"marchid\": %llu,\n  \"mimpid\": %llu,\n",
           (unsigned long long)pairs[0].value, (unsigned long long)pairs[1].value,
           (unsigned long long)pairs[2].value);
  printf("  \"hwcap\": %lu,\n  \"cpus\": %d,\n  \"mem_total\": %llu,\n  \"mem_available\": %llu\n}\n", hwcap, cpus,
         mem_total, mem_avail);
  return 0;
}
