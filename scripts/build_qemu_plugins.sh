#!/usr/bin/env bash
# Builds a qemu-riscv64 (linux-user only) that loads TCG plugins, from Debian trixie's own qemu source
# package (no Debian binary of qemu has plugin support), once; `rvdeploy bench --cost` loads rvdeploy's
# instruction-counting plugin (rvdeploy/qemu_plugin/insncount.c) into it. Cached by version under
#   ${RVDEPLOY_CACHE_DIR:-~/.cache/rvdeploy}/qemu-plugins/   (bin/qemu-riscv64, include/qemu-plugin.h)
# The source comes through apt with a private configuration (its own sources list and lists directory):
# the machine's apt sources are not changed, and the mirror is the one they already name.
#   needs: flex bison libglib2.0-dev pkg-config ninja-build dpkg-dev gcc (scripts/setup.sh installs them);
#          meson >= 1.5 comes from PyPI into a venv inside the cache.
set -euo pipefail
SUITE=${QEMU_SUITE:-trixie}
CACHE=${RVDEPLOY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rvdeploy}/qemu-plugins
OUT=$CACHE/$SUITE
if [[ -x $OUT/bin/qemu-riscv64 && -f $OUT/include/qemu-plugin.h && "${1:-}" != --force ]]; then
  echo "$OUT"; exit 0
fi
mkdir -p "$CACHE"
W=$(mktemp -d "$CACHE/.build-XXXXXX")
trap 'rm -rf "$W"' EXIT
log() { echo "build_qemu_plugins: $*" >&2; }

mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
  | grep -E "^(URIs:|deb )" | grep -oE "https?://[^ ]+/debian/?( |$)" | head -n1 | tr -d ' ' || true)
[[ -n $mirror ]] || { log "no Debian mirror found in /etc/apt/sources.list*"; exit 1; }
mkdir -p "$W/apt/lists/partial" "$W/apt/cache/archives/partial" "$W/src"
echo "deb-src ${mirror%/} $SUITE main" > "$W/apt/sources.list"
APT=(apt-get -q -o "Dir::Etc::SourceList=$W/apt/sources.list" -o "Dir::Etc::SourceParts=$W/apt/none"
     -o "Dir::State::Lists=$W/apt/lists" -o "Dir::Cache=$W/apt/cache" -o "APT::Sandbox::User=root")
log "fetching the qemu source package of $SUITE"
"${APT[@]}" update >&2
(cd "$W/src" && "${APT[@]}" source --download-only "qemu/$SUITE" >&2)
dsc=$(ls "$W"/src/qemu_*.dsc | head -n1)
dpkg-source --no-check -x "$dsc" "$W/src/qemu" >&2
version=$(basename "$dsc" .dsc | sed 's/^qemu_//')
log "qemu $version: configuring"
python3 -m venv "$W/venv"
"$W/venv/bin/pip" install -q --disable-pip-version-check "meson>=1.5" >&2
mkdir -p "$W/build"
(cd "$W/build" && "$W/src/qemu/configure" --target-list=riscv64-linux-user --enable-plugins --disable-docs \
   --disable-tools --disable-system --disable-download --disable-install-blobs \
   --python="$W/venv/bin/python3" >&2)
log "building qemu-riscv64 ($(nproc) jobs)"
ninja -C "$W/build" -j"$(nproc)" qemu-riscv64 >&2
rm -rf "$OUT.tmp"; mkdir -p "$OUT.tmp/bin" "$OUT.tmp/include"
cp "$W/build/qemu-riscv64" "$OUT.tmp/bin/"
cp "$W/src/qemu/include/qemu/qemu-plugin.h" "$OUT.tmp/include/"
echo "$version" > "$OUT.tmp/VERSION"
rm -rf "$OUT"; mv "$OUT.tmp" "$OUT"
log "done: $OUT/bin/qemu-riscv64 ($("$OUT/bin/qemu-riscv64" --version | head -n1))"
echo "$OUT"
