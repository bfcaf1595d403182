#!/usr/bin/env bash
# Installs rvdeploy and everything its tests need, on a fresh Debian 12 machine (as root) or in the
# Dockerfile. CI (.ci/run) and the README's first command both run this script, so it stays true.
#   RVDEPLOY_SKIP_APT=1   skip the Debian packages (pip only)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${RVDEPLOY_SKIP_APT:-0}" != 1 ]] && command -v apt-get >/dev/null; then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  # qemu-user >= 8.1 runs IREE's riscv64 code (Debian 12's 7.2 lacks riscv_hwprobe): take it from
  # bookworm-backports, on the same mirror this machine already uses (never hard-coded here).
  if grep -qs "bookworm" /etc/os-release && ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
      | grep -E "^(URIs:|deb )" | grep -oE "https?://[^ ]+/debian/?( |$)" | head -n1 | tr -d ' ' || true)
    if [[ -n "$mirror" ]]; then
      echo "deb ${mirror%/} bookworm-backports main" | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
    fi
  fi
  $SUDO apt-get update -qq
  # Debian packages the toolkit and its tests use (one line per purpose)
  APT_PACKAGES=(
    ca-certificates
    # the project's mmt4d microkernels: C -> riscv64 LLVM bitcode (rvdeploy build --ukernels project), and
    # their test harness cross-compiled as a static riscv64 executable (tests/test_ukernels.py, under qemu-user)
    clang-19 lld-19 llvm-19
    libc6-dev-riscv64-cross libgcc-12-dev-riscv64-cross linux-libc-dev-riscv64-cross
    # (the same clang also builds the board probe, rvdeploy/probe/probe.c, and the tests' stand-in runtime)
    # llama.cpp for rvdeploy bench --compare llama.cpp: cross-built for riscv64 (its C++ runtime) and built
    # for this machine (g++), with cmake and ninja
    libstdc++-12-dev-riscv64-cross cmake g++
    # boards over ssh, and the emulated board's sshd (rvdeploy sim; tests/test_ssh_board.py)
    openssh-client openssh-server
    # the emulated board's riscv64 Debian userland (rvdeploy sim up)
    debootstrap
    # rvdeploy bench --cost: a plugin-capable qemu-riscv64 built from Debian's qemu source package
    # (scripts/build_qemu_plugins.sh) and rvdeploy's counting plugin (gcc against qemu-plugin.h, which includes glib.h)
    dpkg-dev flex bison libglib2.0-dev pkg-config ninja-build gcc
    # sha256sum for bundle launchers, mount for binfmt_misc and the tests' tiny tmpfs, pgrep in tests,
    # GNU time for the peak memory that bench reports beside its figures
    coreutils mount procps time
  )
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${APT_PACKAGES[@]}" >/dev/null
  # The policy text is captured first: piping apt-cache policy into grep -q under pipefail returns 141 when grep
  # stops reading early, which once sent every fresh machine to Debian 12's qemu 7.2.
  qemu_policy=$(apt-cache policy qemu-user 2>/dev/null || true)
  if [[ "$qemu_policy" == *bpo12* ]]; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports qemu-user >/dev/null
  else
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user >/dev/null
  fi
  # IREE's riscv64 code needs qemu-user >= 8.1 (riscv_hwprobe); stop here rather than let tests fail later.
  qemu_version=$(qemu-riscv64 --version | sed -n 's/.*version \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n1)
  if ! printf '%s\n8.1\n' "$qemu_version" | sort -V -C -r 2>/dev/null; then
    echo "setup: qemu-riscv64 ${qemu_version:-?} installed; rvdeploy needs >= 8.1 (bookworm-backports)" >&2
    exit 1
  fi
fi

python3 -m pip install -q --disable-pip-version-check -e ".[test]"

# once (cached under ~/.cache/rvdeploy/qemu-plugins; ~2-4 min on 2 cores): the qemu that `bench --cost` uses
if [[ "${RVDEPLOY_SKIP_APT:-0}" != 1 ]] && command -v apt-get >/dev/null; then
  log=$(mktemp "${TMPDIR:-/tmp}/rvdeploy-qemu-plugins-XXXXXX.log")
  if ! bash scripts/build_qemu_plugins.sh >/dev/null 2>"$log"; then
    tail -n 20 "$log" >&2
    echo "setup: building the plugin-capable qemu for rvdeploy bench --cost failed (log: $log)" >&2
    exit 1
  fi
  rm -f "$log"
fi
