#!/usr/bin/env bash
# jemalloc for the `tunelab` command (tunelab/allocator.py: measured lower training memory than glibc's
# malloc). Usage: scripts/get-jemalloc.sh DEST_DIR. Does nothing when DEST_DIR or the system already has
# libjemalloc.so.2; on Debian/Ubuntu copies the libjemalloc2 package's library into DEST_DIR without root
# (apt-get download + dpkg-deb -x). Elsewhere, or when the download fails, it says so and exits 0: tunelab then
# runs on the system's malloc.
set -euo pipefail
dest=$1
for dir in "$dest" /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib /usr/local/lib; do
  if [ -f "$dir/libjemalloc.so.2" ]; then echo "jemalloc: $dir/libjemalloc.so.2"; exit 0; fi
done
skip() { echo "jemalloc: $1; tunelab will use the system's malloc (install jemalloc for less training memory)" >&2; exit 0; }
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || skip "not found, and no apt-get/dpkg-deb here"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -q libjemalloc2 >/dev/null 2>&1) || skip "'apt-get download libjemalloc2' failed"
dpkg-deb -x "$tmp"/libjemalloc2_*.deb "$tmp/root"
found=$(find "$tmp/root" -name libjemalloc.so.2 | head -1)
[ -n "$found" ] || skip "no libjemalloc.so.2 in the libjemalloc2 package"
mkdir -p "$dest"
cp "$found" "$dest/libjemalloc.so.2.part" && mv "$dest/libjemalloc.so.2.part" "$dest/libjemalloc.so.2"
echo "jemalloc: $dest/libjemalloc.so.2"
