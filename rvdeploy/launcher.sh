#!/bin/sh
# rvdeploy board-side launcher (POSIX sh: runs on any Linux board, busybox included).
# Before running anything it checks (1) every file of the bundle against SHA256SUMS and (2) the board's
# architecture, VLEN and ISA extensions against what the bundle was compiled for: IREE's runtime checks
# neither, and a module built for a larger VLEN computes wrong results silently.
#   sh launcher.sh check                 verify, then print "ok"
#   sh launcher.sh probe [--env]         what the board has (the probe's output)
#   sh launcher.sh run TOOL ARGS...      verify, then exec TOOL (iree-run-module, iree-benchmark-module, rvdeploy-runner)
# Exit status: 3 = refused (message names what differs), 4 = no runtime for this board, 2 = usage.
# RVDEPLOY_RUN_PREFIX (e.g. a qemu-riscv64 path) is put in front of every riscv64 program; the CPU then
# comes from QEMU_CPU.
set -u
# --- requirements, written by rvdeploy build from the target (also in manifest.json) ---
@REQUIREMENTS@
# ---

refuse() { echo "rvdeploy-launcher: refused: $*" >&2; exit 3; }
cd "$(dirname "$0")" || refuse "cannot enter the bundle directory"
prefix=${RVDEPLOY_RUN_PREFIX:-}

verify() {
  command -v sha256sum >/dev/null 2>&1 || refuse "sha256sum not found on the board (install coreutils)"
  if ! out=$(sha256sum -c SHA256SUMS 2>&1); then
    # only the per-file verdicts: sha256sum's own "sha256sum: WARNING: ..." lines name no file of the bundle
    bad=$(printf '%s\n' "$out" | grep -E ': FAILED( open or read)?$' | sed 's/: FAILED.*//' | head -n 3 | tr '\n' ' ')
    refuse "file(s) do not match their sha256 in the manifest: ${bad:-SHA256SUMS}(altered or damaged copy)"
  fi
}

check() {
  if [ -z "$prefix" ] && [ "$(uname -m)" != "$REQUIRE_ARCH" ]; then
    refuse "architecture differs: bundle is for $REQUIRE_ARCH, board is $(uname -m)"
  fi
  [ -n "$PROBE" ] || return 0
  out=$($prefix "./$PROBE" --env 2>&1) || refuse "the board probe failed: $(printf '%s\n' "$out" | tail -n 1)"
  board_arch=; board_vlen=0; board_ext=; detectable=
  while IFS='=' read -r k v; do
    case $k in
      arch) board_arch=$v ;;
      vlen) board_vlen=$v ;;
      extensions) board_ext=$v ;;
      detectable) detectable=$v ;;
    esac
  done <<PROBE_OUTPUT
$out
PROBE_OUTPUT
  diffs=
  [ "$board_arch" = "$REQUIRE_ARCH" ] || diffs="$diffs; architecture: bundle is for $REQUIRE_ARCH, board is $board_arch"
  if [ "$REQUIRE_VLEN" -gt 0 ] && [ "$board_vlen" != "$REQUIRE_VLEN" ]; then
    diffs="$diffs; VLEN: bundle needs $REQUIRE_VLEN, board has $board_vlen"
  fi
  missing=
  for e in $REQUIRE_EXTENSIONS; do
    case " $detectable " in *" $e "*) ;; *) continue ;; esac  # the probe cannot see it: not checkable here
    case " $board_ext " in *" $e "*) ;; *) missing="$missing $e" ;; esac
  done
  [ -z "$missing" ] || diffs="$diffs; extensions missing on the board:$missing"
  [ -z "$diffs" ] || refuse "${diffs#; }"
}

tool_path() {
  if [ -n "$RUNTIME_DIR" ] && [ -f "$RUNTIME_DIR/$1" ]; then echo "./$RUNTIME_DIR/$1"; return 0; fi
  # host bundles use the board's own IREE tools (iree-base-runtime)
  if [ -z "$PROBE" ] && command -v "$1" >/dev/null 2>&1; then command -v "$1"; return 0; fi
  return 1
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
  check) verify; check; echo ok ;;
  probe)
    if [ -n "$PROBE" ]; then exec $prefix "./$PROBE" "$@"; fi
    uname -m ;;
  run)
    [ $# -gt 0 ] || { echo "usage: sh launcher.sh run TOOL ARGS..." >&2; exit 2; }
    case $1 in iree-run-module|iree-benchmark-module|rvdeploy-runner) ;; *) echo "unknown tool: $1" >&2; exit 2 ;; esac
    verify
    check
    exe=$(tool_path "$1") || { echo "rvdeploy-launcher: no runtime: $RUNTIME_HINT" >&2; exit 4; }
    shift
    exec $prefix "$exe" "$@" ;;
  *) echo "usage: sh launcher.sh check | probe [--env] | run TOOL ARGS..." >&2; exit 2 ;;
esac
