// rvdeploy-runner: generation on the board with IREE's runtime C API.
//
// Loads the bundle's module (weights from the parameter archive through IREE's --parameters, mapped, not
// copied), calls `prefill` on the prompt and then `decode` one token at a time, and writes each new token id
// to stdout the moment it is chosen. The KV cache is either kept by the module itself at a fixed capacity
// (--inputs=ids,past --kv_count=0: the runner passes the count of cached tokens) or passed in and out as
// device buffers between calls (--kv_count=N).
//
//   rvdeploy-runner --module=model.vmfb --parameters=model=model.irpa --device=local-sync
//       --inputs=ids,mask,pos --kv_count=4 --kv_heads=2 --head_dim=16 --kv_type=f32
//       --prompt=1,2,3 --max_new_tokens=32 --context=256 --eos=2
//       [--temperature=0.8 --top_k=40 --top_p=0.95 --seed=7] [--interactive]
//
// stdout, line by line (flushed each time):
//   <token id>                     a generated token
//   end <eos|length|context|interrupted>   the turn is over, and why (SIGINT ends a turn, not the session)
//   stats k=v ...                  load_s prompt_tokens prefill_s generated decode_s context_used peak_rss_kb
// With --interactive, after "end" and "stats" it reads the next turn from stdin as one line
// "MAX_NEW_TOKENS ID,ID,..." and continues the same session (the KV cache is kept); EOF ends it.
//
// Sampling (tests/sampling_reference.py recomputes it from onnxruntime's logits):
//   temperature 0: argmax (lowest index among equal maxima).
//   otherwise, in double precision: z = logits / temperature; candidates sorted by z descending (ties: lower
//   index first); top_k > 0 keeps the first k; p = softmax over the candidates (exp(z - max)); top_p < 1
//   keeps the shortest prefix whose cumulative p >= top_p (at least one); u = pcg32() / 2^32; the token is
//   the first candidate whose cumulative p (renormalized over the kept ones) exceeds u (the last otherwise).
//   pcg32 is O'Neill's pcg32_random_r (XSH RR) seeded as pcg32_srandom_r(seed, 54).
//
// Exit codes: 0 done, 1 runtime error (message on stderr), 2 usage.

#define _GNU_SOURCE  // getline, sigaction

#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "iree/base/api.h"
#include "iree/base/threading/thread.h"
#include "iree/base/tooling/flags.h"
#include "iree/hal/api.h"
#include "iree/modules/hal/types.h"
#include "iree/tooling/context_util.h"
#include "iree/vm/api.h"

IREE_FLAG(string, prompt, "", "Prompt token ids, comma-separated.");
IREE_FLAG(int32_t, max_new_tokens, 32, "Stop after this many new tokens.");
IREE_FLAG(int32_t, context, 0, "The model's context length: stop before exceeding it (0: no limit).");
IREE_FLAG(string, eos, "", "End-of-sequence token ids, comma-separated: stop after emitting one.");
IREE_FLAG(string, inputs, "ids,mask,pos",
          "The entry points' leading inputs in order (ids, mask, pos, past: the cached token count as a "
          "i64 scalar, for modules that keep the KV cache themselves); the KV tensors follow.");
IREE_FLAG(int32_t, kv_count, 0, "Number of KV cache tensors (2 per layer).");
IREE_FLAG(int32_t, kv_heads, 0, "KV heads.");
IREE_FLAG(int32_t, head_dim, 0, "Head dimension.");
IREE_FLAG(string, kv_type, "f32", "KV cache element type: f32 or f16.");
IREE_FLAG(float, temperature, 0.0f, "Sampling temperature (0: greedy).");
IREE_FLAG(int32_t, top_k, 0, "Keep the k most likely tokens (0: all).");
IREE_FLAG(float, top_p, 1.0f, "Keep the smallest set of tokens whose probability reaches p (1: all).");
IREE_FLAG(int64_t, seed, 0, "Seed of the sampler's PCG32 generator.");
IREE_FLAG(bool, interactive, false, "Read further turns from stdin, keeping the session (chat).");
IREE_FLAG(int32_t, cached_tokens, 0,
          "Measurement only: start as if the cache already held this many tokens (keys and values left as the "
          "module initialized them), so one decode at that depth is counted without a prefill as long. Needs a "
          "module that keeps its cache (--inputs=ids,past) and a one-token prompt.");

static volatile sig_atomic_t interrupted = 0;  // SIGINT: end the current turn

static void on_sigint(int sig) {
  (void)sig;
  interrupted = 1;
}

enum { ROLE_IDS, ROLE_MASK, ROLE_POS, ROLE_PAST };
#define MAX_ROLES 4
#define MAX_KV 1024

typedef struct {
  iree_vm_context_t* context;
  iree_hal_device_t* device;
  iree_hal_allocator_t* allocator;
  iree_vm_function_t prefill, decode;
  int roles[MAX_ROLES];
  int role_count;
  iree_hal_element_type_t kv_type;
  iree_hal_buffer_view_t* kv[MAX_KV];  // the cache, owned; NULL before the first call
  int64_t past;                         // tokens the cache holds
  float* logits;                        // the last position's logits
  int64_t vocab;
  double prefill_s, decode_s;
} session_t;

// ---------------------------------------------------------------------------------------- pcg32
typedef struct {
  uint64_t state, inc;
} pcg32_t;

static uint32_t pcg32_next(pcg32_t* rng) {
  uint64_t old = rng->state;
  rng->state = old * 6364136223846793005ULL + rng->inc;
  uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
  uint32_t rot = (uint32_t)(old >> 59u);
  return (xorshifted >> rot) | (xorshifted << ((-rot) & 31));
}

static void pcg32_seed(pcg32_t* rng, uint64_t initstate, uint64_t initseq) {
  rng->state = 0U;
  rng->inc = (initseq << 1u) | 1u;
  pcg32_next(rng);
  rng->state += initstate;
  pcg32_next(rng);
}

// -------------------------------------------------------------------------------------- sampling
typedef struct {
  double z;
  int32_t id;
} cand_t;

static int cand_cmp(const void* a, const void* b) {
  const cand_t* x = (const cand_t*)a;
  const cand_t* y = (const cand_t*)b;
  if (x->z > y->z) return -1;
  if (x->z < y->z) return 1;
  return x->id < y->id ? -1 : (x->id > y->id);
}

static int32_t sample(const float* logits, int64_t vocab, pcg32_t* rng, cand_t* scratch) {
  if (FLAG_temperature <= 0.0f) {
    int64_t best = 0;
    for (int64_t i = 1; i < vocab; ++i) {
      if (logits[i] > logits[best]) best = i;
    }
    return (int32_t)best;
  }
  for (int64_t i = 0; i < vocab; ++i) {
    scratch[i].z = (double)logits[i] / (double)FLAG_temperature;
    scratch[i].id = (int32_t)i;
  }
  qsort(scratch, (size_t)vocab, sizeof(cand_t), cand_cmp);
  int64_t n = vocab;
  if (FLAG_top_k > 0 && FLAG_top_k < n) n = FLAG_top_k;
  double max = scratch[0].z, total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    scratch[i].z = exp(scratch[i].z - max);  // z now holds the unnormalized probability
    total += scratch[i].z;
  }
  if (FLAG_top_p < 1.0f) {
    double cum = 0.0;
    int64_t keep = n;
    for (int64_t i = 0; i < n; ++i) {
      cum += scratch[i].z / total;
      if (cum >= (double)FLAG_top_p) {
        keep = i + 1;
        break;
      }
    }
    n = keep;
    total = 0.0;
    for (int64_t i = 0; i < n; ++i) total += scratch[i].z;
  }
  double u = (double)pcg32_next(rng) / 4294967296.0;
  double cum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    cum += scratch[i].z / total;
    if (cum > u) return scratch[i].id;
  }
  return scratch[n - 1].id;
}

// ------------------------------------------------------------------------------------- helpers
static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Seconds as text from whole microseconds: glibc formats a double in a value-dependent number of instructions
// (up to ~100 here), which would be noise in every run that bench --cost counts.
typedef struct {
  char text[32];
} seconds_text_t;
static seconds_text_t seconds_text(double s) {
  seconds_text_t t;
  long long us = (long long)(s * 1e6 + 0.5);
  char frac[7];  // six digits by hand: printf's zero padding also costs per digit missing
  for (int i = 5; i >= 0; --i, us /= 10) frac[i] = (char)('0' + us % 10);
  frac[6] = 0;
  snprintf(t.text, sizeof t.text, "%lld.%s", us, frac);
  return t;
}

static long peak_rss_kb(void) {
  struct rusage usage;
  return getrusage(RUSAGE_SELF, &usage) == 0 ? usage.ru_maxrss : -1;
}

// Parses "1,2,3" (commas or spaces) into a malloc'ed array; returns the count, -1 on a bad number.
static int64_t parse_ids(const char* text, int64_t** out) {
  int64_t cap = 16, n = 0;
  int64_t* ids = (int64_t*)malloc(sizeof(int64_t) * cap);
  const char* p = text;
  while (*p) {
    while (*p == ',' || *p == ' ' || *p == '\n' || *p == '\r') ++p;
    if (!*p) break;
    char* end = NULL;
    long long v = strtoll(p, &end, 10);
    if (end == p || v < 0) {
      free(ids);
      return -1;
    }
    if (n == cap) ids = (int64_t*)realloc(ids, sizeof(int64_t) * (cap *= 2));
    ids[n++] = (int64_t)v;
    p = end;
  }
  *out = ids;
  return n;
}

static iree_status_t make_i64(session_t* s, int64_t rows, int64_t cols, const int64_t* data,
                              iree_hal_buffer_view_t** out) {
  iree_hal_dim_t shape[2] = {(iree_hal_dim_t)rows, (iree_hal_dim_t)cols};
  iree_hal_buffer_params_t params = {.type = IREE_HAL_MEMORY_TYPE_DEVICE_LOCAL,
                                     .usage = IREE_HAL_BUFFER_USAGE_DEFAULT};
  return iree_hal_buffer_view_allocate_buffer_copy(
      s->device, s->allocator, 2, shape, IREE_HAL_ELEMENT_TYPE_SINT_64,
      IREE_HAL_ENCODING_TYPE_DENSE_ROW_MAJOR, params,
      iree_make_const_byte_span(data, (iree_host_size_t)(rows * cols * sizeof(int64_t))), out);
}

static iree_status_t make_empty_kv(session_t* s, iree_hal_buffer_view_t** out) {
  iree_hal_dim_t shape[4] = {1, (iree_hal_dim_t)FLAG_kv_heads, 0, (iree_hal_dim_t)FLAG_head_dim};
  iree_hal_buffer_params_t params = {.type = IREE_HAL_MEMORY_TYPE_DEVICE_LOCAL,
                                     .usage = IREE_HAL_BUFFER_USAGE_DEFAULT};
  return iree_hal_buffer_view_allocate_buffer_copy(s->device, s->allocator, 4, shape, s->kv_type,
                                                   IREE_HAL_ENCODING_TYPE_DENSE_ROW_MAJOR, params,
                                                   iree_const_byte_span_empty(), out);
}

static float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) {
        mant <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((mant & 0x3FF) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
}

// Copies the last position's logits of a [1, S, V] result into s->logits.
static iree_status_t read_last_logits(session_t* s, iree_hal_buffer_view_t* view) {
  iree_host_size_t rank = iree_hal_buffer_view_shape_rank(view);
  if (rank != 3) return iree_make_status(IREE_STATUS_INVALID_ARGUMENT, "logits of rank %d", (int)rank);
  int64_t seq = (int64_t)iree_hal_buffer_view_shape_dim(view, 1);
  int64_t vocab = (int64_t)iree_hal_buffer_view_shape_dim(view, 2);
  iree_hal_element_type_t type = iree_hal_buffer_view_element_type(view);
  iree_host_size_t width = iree_hal_element_dense_byte_count(type);
  if (type != IREE_HAL_ELEMENT_TYPE_FLOAT_32 && type != IREE_HAL_ELEMENT_TYPE_FLOAT_16) {
    return iree_make_status(IREE_STATUS_UNIMPLEMENTED, "logits element type 0x%08x", (unsigned)type);
  }
  if (s->logits == NULL || s->vocab != vocab) {
    free(s->logits);
    s->logits = (float*)malloc(sizeof(float) * vocab);
    s->vocab = vocab;
  }
  iree_device_size_t offset = (iree_device_size_t)((seq - 1) * vocab * width);
  if (type == IREE_HAL_ELEMENT_TYPE_FLOAT_32) {
    return iree_hal_device_transfer_d2h(s->device, iree_hal_buffer_view_buffer(view), offset, s->logits,
                                        (iree_device_size_t)(vocab * width),
                                        IREE_HAL_TRANSFER_BUFFER_FLAG_DEFAULT, iree_infinite_timeout());
  }
  uint16_t* tmp = (uint16_t*)malloc(2 * vocab);
  iree_status_t status = iree_hal_device_transfer_d2h(
      s->device, iree_hal_buffer_view_buffer(view), offset, tmp, (iree_device_size_t)(vocab * width),
      IREE_HAL_TRANSFER_BUFFER_FLAG_DEFAULT, iree_infinite_timeout());
  for (int64_t i = 0; i < vocab && iree_status_is_ok(status); ++i) s->logits[i] = half_to_float(tmp[i]);
  free(tmp);
  return status;
}

// A module that keeps its cache (the "past" role) prefills only from an empty cache: a later turn's tokens
// go through decode one at a time.
static bool stateful(const session_t* s) {
  for (int r = 0; r < s->role_count; ++r) {
    if (s->roles[r] == ROLE_PAST) return true;
  }
  return false;
}

static iree_status_t invoke_entry(session_t* s, const int64_t* ids, int64_t n);

// Feeds ids at positions past..past+n-1 (prefill for a new conversation or a whole turn, decode for one
// token), keeps the new cache, reads the last logits.
static iree_status_t step(session_t* s, const int64_t* ids, int64_t n) {
  if (n > 1 && s->past > 0 && stateful(s)) {
    for (int64_t i = 0; i < n; ++i) {
      IREE_RETURN_IF_ERROR(invoke_entry(s, ids + i, 1));
    }
    return iree_ok_status();
  }
  return invoke_entry(s, ids, n);
}

// One call of prefill (n tokens) or decode (n == 1 and a non-empty cache).
static iree_status_t invoke_entry(session_t* s, const int64_t* ids, int64_t n) {
  bool use_decode = n == 1 && s->past > 0;
  iree_vm_list_t* inputs = NULL;
  iree_vm_list_t* outputs = NULL;
  IREE_RETURN_IF_ERROR(iree_vm_list_create(iree_vm_make_undefined_type_def(), MAX_ROLES + FLAG_kv_count,
                                           iree_allocator_system(), &inputs));
  iree_status_t status = iree_vm_list_create(iree_vm_make_undefined_type_def(), 1 + FLAG_kv_count,
                                             iree_allocator_system(), &outputs);
  int64_t total = s->past + n;
  int64_t* mask = (int64_t*)malloc(sizeof(int64_t) * total);
  int64_t* pos = (int64_t*)malloc(sizeof(int64_t) * n);
  for (int64_t i = 0; i < total; ++i) mask[i] = 1;
  for (int64_t i = 0; i < n; ++i) pos[i] = s->past + i;
  for (int r = 0; r < s->role_count && iree_status_is_ok(status); ++r) {
    iree_hal_buffer_view_t* view = NULL;
    if (s->roles[r] == ROLE_IDS) status = make_i64(s, 1, n, ids, &view);
    if (s->roles[r] == ROLE_MASK) status = make_i64(s, 1, total, mask, &view);
    if (s->roles[r] == ROLE_POS) status = make_i64(s, 1, n, pos, &view);
    if (s->roles[r] == ROLE_PAST) {  // an i64 scalar argument, not a tensor
      iree_vm_value_t past = iree_vm_value_make_i64(s->past);
      status = iree_vm_list_push_value(inputs, &past);
      continue;
    }
    if (iree_status_is_ok(status)) {
      iree_vm_ref_t ref = iree_hal_buffer_view_move_ref(view);
      status = iree_vm_list_push_ref_move(inputs, &ref);
    }
  }
  for (int i = 0; i < FLAG_kv_count && iree_status_is_ok(status); ++i) {
    if (s->kv[i] == NULL) status = make_empty_kv(s, &s->kv[i]);
    if (iree_status_is_ok(status)) {
      iree_vm_ref_t ref = iree_hal_buffer_view_retain_ref(s->kv[i]);
      status = iree_vm_list_push_ref_move(inputs, &ref);
    }
  }
  free(mask);
  free(pos);
  double t0 = now_s();
  if (iree_status_is_ok(status)) {
    status = iree_vm_invoke(s->context, use_decode ? s->decode : s->prefill, IREE_VM_INVOCATION_FLAG_NONE,
                            /*policy=*/NULL, inputs, outputs, iree_allocator_system());
  }
  if (iree_status_is_ok(status)) {
    iree_hal_buffer_view_t* logits =
        (iree_hal_buffer_view_t*)iree_vm_list_get_ref_deref(outputs, 0, iree_hal_buffer_view_type());
    status = logits ? read_last_logits(s, logits)
                    : iree_make_status(IREE_STATUS_FAILED_PRECONDITION, "result 0 is not a tensor");
  }
  for (int i = 0; i < FLAG_kv_count && iree_status_is_ok(status); ++i) {
    iree_hal_buffer_view_t* kv =
        (iree_hal_buffer_view_t*)iree_vm_list_get_ref_deref(outputs, 1 + i, iree_hal_buffer_view_type());
    if (kv == NULL) {
      status = iree_make_status(IREE_STATUS_FAILED_PRECONDITION, "result %d is not a tensor", 1 + i);
    } else {
      iree_hal_buffer_view_retain(kv);
      iree_hal_buffer_view_release(s->kv[i]);
      s->kv[i] = kv;  // the cache stays on the device: no copy to the host
    }
  }
  double dt = now_s() - t0;
  if (use_decode) {
    s->decode_s += dt;
  } else {
    s->prefill_s += dt;
  }
  if (iree_status_is_ok(status)) s->past = total;
  iree_vm_list_release(inputs);
  iree_vm_list_release(outputs);
  return status;
}

static bool is_eos(const int64_t* eos, int64_t eos_count, int64_t token) {
  for (int64_t i = 0; i < eos_count; ++i) {
    if (eos[i] == token) return true;
  }
  return false;
}

// One turn: the prompt ids (plus a token sampled at the end of the previous turn that the cache has not
// seen yet), then up to max_new tokens. Returns the token sampled last and not yet fed (or -1).
static iree_status_t turn(session_t* s, const int64_t* ids, int64_t n, int64_t max_new, const int64_t* eos,
                          int64_t eos_count, pcg32_t* rng, cand_t** scratch, double load_s,
                          int64_t* out_pending) {
  double t_prefill = s->prefill_s, t_decode = s->decode_s;
  int64_t generated = 0;
  const char* why = "length";
  if (FLAG_context > 0 && s->past + n >= FLAG_context) {
    return iree_make_status(IREE_STATUS_OUT_OF_RANGE, "prompt of %d tokens after %d in the session fills the "
                            "model's context of %d", (int)n, (int)s->past, (int)FLAG_context);
  }
  IREE_RETURN_IF_ERROR(step(s, ids, n));
  if (*scratch == NULL) *scratch = (cand_t*)malloc(sizeof(cand_t) * s->vocab);
  interrupted = 0;
  while (generated < max_new) {
    if (interrupted) {
      why = "interrupted";
      break;
    }
    int64_t token = sample(s->logits, s->vocab, rng, *scratch);
    *out_pending = token;
    printf("%lld\n", (long long)token);
    fflush(stdout);
    ++generated;
    if (is_eos(eos, eos_count, token)) {
      why = "eos";
      break;
    }
    if (generated == max_new) break;
    if (FLAG_context > 0 && s->past + 1 >= FLAG_context) {
      why = "context";
      break;
    }
    IREE_RETURN_IF_ERROR(step(s, &token, 1));
  }
  // the last token is in the output but not in the cache: an interactive session feeds it with the next
  // turn (the caller keeps it); a finished session never needs it
  printf("end %s\n", why);
  printf("stats load_s=%s prompt_tokens=%lld prefill_s=%s generated=%lld decode_s=%s "
         "decode_steps=%lld context_used=%lld peak_rss_kb=%ld\n",
         seconds_text(load_s).text, (long long)n, seconds_text(s->prefill_s - t_prefill).text,
         (long long)generated, seconds_text(s->decode_s - t_decode).text,
         (long long)(generated > 0 ? generated - 1 : 0), (long long)s->past + 1, peak_rss_kb());
  fflush(stdout);
  return iree_ok_status();
}

static iree_status_t parse_roles(session_t* s) {
  const char* p = FLAG_inputs;
  s->role_count = 0;
  while (*p) {
    const char* end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (s->role_count == MAX_ROLES) return iree_make_status(IREE_STATUS_INVALID_ARGUMENT, "--inputs: too many");
    if (len == 3 && !strncmp(p, "ids", 3)) {
      s->roles[s->role_count++] = ROLE_IDS;
    } else if (len == 4 && !strncmp(p, "mask", 4)) {
      s->roles[s->role_count++] = ROLE_MASK;
    } else if (len == 3 && !strncmp(p, "pos", 3)) {
      s->roles[s->role_count++] = ROLE_POS;
    } else if (len == 4 && !strncmp(p, "past", 4)) {
      s->roles[s->role_count++] = ROLE_PAST;
    } else {
      return iree_make_status(IREE_STATUS_INVALID_ARGUMENT, "--inputs: unknown role '%.*s'", (int)len, p);
    }
    p = end ? end + 1 : p + len;
  }
  return iree_ok_status();
}

static iree_status_t check_flags(void) {
  if (FLAG_kv_count < 0 || FLAG_kv_count > MAX_KV || FLAG_kv_heads <= 0 || FLAG_head_dim <= 0) {
    return iree_make_status(IREE_STATUS_INVALID_ARGUMENT, "--kv_count, --kv_heads and --head_dim are required");
  }
  if (!(FLAG_temperature >= 0.0f)) return iree_make_status(IREE_STATUS_INVALID_ARGUMENT, "--temperature < 0");
  if (!(FLAG_top_p > 0.0f && FLAG_top_p <= 1.0f)) {
    return iree_make_status(IREE_STATUS_INVALID_ARGUMENT, "--top_p outside (0, 1]");
  }
  if (FLAG_top_k < 0) return iree_make_status(IREE_STATUS_INVALID_ARGUMENT, "--top_k < 0");
  if (FLAG_max_new_tokens < 1) return iree_make_status(IREE_STATUS_INVALID_ARGUMENT, "--max_new_tokens < 1");
  if (FLAG_cached_tokens < 0) return iree_make_status(IREE_STATUS_INVALID_ARGUMENT, "--cached_tokens < 0");
  return iree_ok_status();
}

static iree_status_t run(iree_vm_instance_t* instance) {
  session_t s;
  memset(&s, 0, sizeof(s));
  IREE_RETURN_IF_ERROR(check_flags());
  IREE_RETURN_IF_ERROR(parse_roles(&s));
  s.kv_type = strcmp(FLAG_kv_type, "f16") == 0 ? IREE_HAL_ELEMENT_TYPE_FLOAT_16 : IREE_HAL_ELEMENT_TYPE_FLOAT_32;
  int64_t *prompt = NULL, *eos = NULL;
  int64_t n = parse_ids(FLAG_prompt, &prompt);
  int64_t eos_count = parse_ids(FLAG_eos, &eos);
  if (n <= 0 || eos_count < 0) {
    free(prompt);
    free(eos);
    return iree_make_status(IREE_STATUS_INVALID_ARGUMENT, "--prompt needs token ids (and --eos ids if given)");
  }
  if (FLAG_cached_tokens > 0 && (!stateful(&s) || n != 1)) {
    free(prompt);
    free(eos);
    // a passed-in cache has a shape to fill, and a longer prompt would be a prefill (from position 0 only)
    return iree_make_status(IREE_STATUS_INVALID_ARGUMENT,
                            "--cached_tokens needs --inputs with past (a module that keeps its cache) and a "
                            "one-token prompt");
  }
  s.past = FLAG_cached_tokens;  // the cache's contents do not change the work of a decode step

  double t0 = now_s();
  iree_tooling_module_list_t modules;
  iree_tooling_module_list_initialize(&modules);
  iree_hal_device_list_t* devices = NULL;
  iree_status_t status = iree_tooling_load_modules_from_flags(instance, iree_allocator_system(), &modules);
  iree_vm_module_t* main_module = iree_status_is_ok(status) ? iree_tooling_module_list_back(&modules) : NULL;
  if (iree_status_is_ok(status) && main_module == NULL) {
    status = iree_make_status(IREE_STATUS_INVALID_ARGUMENT, "no --module given");
  }
  if (iree_status_is_ok(status)) {
    status = iree_tooling_create_context_from_flags(instance, modules.count, modules.values,
                                                    IREE_SV("local-sync"), iree_allocator_system(), &s.context,
                                                    &devices, &s.allocator, /*out_replay_recorder=*/NULL);
  }
  if (iree_status_is_ok(status)) {
    status = iree_vm_module_lookup_function_by_name(main_module, IREE_VM_FUNCTION_LINKAGE_EXPORT,
                                                    IREE_SV("prefill"), &s.prefill);
  }
  if (iree_status_is_ok(status)) {
    status = iree_vm_module_lookup_function_by_name(main_module, IREE_VM_FUNCTION_LINKAGE_EXPORT,
                                                    IREE_SV("decode"), &s.decode);
  }
  if (iree_status_is_ok(status)) s.device = devices->devices[0];
  double load_s = now_s() - t0;

  pcg32_t rng;
  pcg32_seed(&rng, (uint64_t)FLAG_seed, 54u);
  cand_t* scratch = NULL;
  int64_t max_new = FLAG_max_new_tokens;
  int64_t pending = -1;  // printed at the end of the previous turn, not yet in the cache
  char* line = NULL;
  size_t line_cap = 0;
  while (iree_status_is_ok(status)) {
    status = turn(&s, prompt, n, max_new, eos, eos_count, &rng, &scratch, load_s, &pending);
    if (!iree_status_is_ok(status) || !FLAG_interactive) break;
    if (getline(&line, &line_cap, stdin) <= 0) break;  // EOF: the session ends
    char* rest = NULL;
    long long next_max = strtoll(line, &rest, 10);
    int64_t* ids = NULL;
    int64_t count = parse_ids(rest ? rest : "", &ids);
    if (next_max < 1 || count <= 0) {
      free(ids);
      status = iree_make_status(IREE_STATUS_INVALID_ARGUMENT, "a turn is one line 'MAX_NEW_TOKENS ID,ID,...'");
      break;
    }
    // the next turn starts with the token the cache has not seen yet
    free(prompt);
    n = count + (pending >= 0 ? 1 : 0);
    prompt = (int64_t*)malloc(sizeof(int64_t) * n);
    if (pending >= 0) prompt[0] = pending;
    memcpy(prompt + (pending >= 0 ? 1 : 0), ids, sizeof(int64_t) * count);
    free(ids);
    pending = -1;
    max_new = next_max;
  }
  if (iree_status_is_ok(status)) {
    // Done: leave without tearing the device down. The OS frees it all at once (seconds faster for GB of
    // weights), and the worker threads' exit path aborts in glibc's unwinder under some emulators (the
    // emulated ssh board's counting qemu: "libgcc_s.so.1 must be installed for pthread_exit to work").
    fflush(stdout);
    fflush(stderr);
    _exit(0);
  }
  free(line);
  free(scratch);
  free(prompt);
  free(eos);
  free(s.logits);
  for (int i = 0; i < FLAG_kv_count; ++i) iree_hal_buffer_view_release(s.kv[i]);
  iree_vm_context_release(s.context);
  iree_hal_allocator_release(s.allocator);
  if (devices) iree_hal_device_list_free(devices);
  iree_tooling_module_list_reset(&modules);
  return status;
}

static int settle_pipe[2] = {-1, -1};

static int park(void* arg) {
  (void)arg;
  char c = 1;
  (void)!write(settle_pipe[1], &c, 1);
  for (;;) pause();  // never exits: see below
  return 0;
}

// IREE's threads look up pthread_setname_np once, as each starts. The device's threads (even local-sync's:
// async I/O and its poller) start together and race for that lookup, and the loser's wait made a run's
// executed instructions vary by up to ~250 (bench --cost counts them). One thread started first settles the
// lookup: counted runs then repeat exactly. It stays parked, like the device's threads, because a thread's
// exit aborts in glibc's unwinder under the emulated ssh board's counting qemu. Best effort: a failure only
// leaves the race.
static void settle_thread_start(void) {
  iree_thread_t* thread = NULL;
  iree_thread_create_params_t params;
  memset(&params, 0, sizeof(params));
  if (pipe(settle_pipe) != 0) return;
  iree_status_t status = iree_thread_create(park, NULL, params, iree_allocator_system(), &thread);
  if (iree_status_is_ok(status)) {
    char c;
    (void)!read(settle_pipe[0], &c, 1);  // it has started (and named itself)
  } else {
    iree_status_ignore(status);
  }
}

int main(int argc, char** argv) {
  iree_flags_set_usage("rvdeploy-runner",
                       "Generates tokens with a bundle's prefill/decode entry points (see the source's header).\n");
  iree_flags_parse_checked(IREE_FLAGS_PARSE_MODE_DEFAULT, &argc, &argv);
  struct sigaction action;
  memset(&action, 0, sizeof(action));
  action.sa_handler = on_sigint;  // no SA_RESTART: a turn waiting on stdin is not blocked by it
  sigaction(SIGINT, &action, NULL);
  settle_thread_start();
  iree_vm_instance_t* instance = NULL;
  iree_status_t status = iree_tooling_create_instance(iree_allocator_system(), &instance);
  if (iree_status_is_ok(status)) status = run(instance);
  iree_vm_instance_release(instance);
  if (!iree_status_is_ok(status)) {
    fflush(stdout);
    iree_status_fprint(stderr, status);
    iree_status_free(status);
    return 1;
  }
  return 0;
}
