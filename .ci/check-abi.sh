#!/usr/bin/env bash
# The aarch64 binary must run on JetPack 6 (Ubuntu 22.04): glibc 2.35 and GStreamer 1.20, while
# this machine builds against glibc 2.36 and GStreamer 1.22.
# - glibc: the highest GLIBC_ symbol version the binary needs (readelf reads any ELF).
# - GStreamer: the Rust bindings expose API newer than their baseline only behind `v1_NN`
#   features; none above v1_20 may be on anywhere in vigil's dependency tree.
set -euo pipefail
binary=${1:-target/cross/aarch64-unknown-linux-gnu/release/vigil}
max_glibc=2.35
max_gst_minor=20
[[ -f $binary ]] || { echo "check-abi: $binary is not built (make aarch64)" >&2; exit 1; }
highest=$(readelf -V -W "$binary" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/^GLIBC_//' | sort -uV | tail -1)
[[ -n $highest ]] || { echo "check-abi: $binary names no GLIBC_ version" >&2; exit 1; }
if [[ $(printf '%s\n%s\n' "$highest" "$max_glibc" | sort -V | tail -1) != "$max_glibc" ]]; then
  echo "check-abi: $binary needs GLIBC_$highest; JetPack 6 has $max_glibc" >&2
  readelf -V -W "$binary" | grep "GLIBC_$highest" >&2 || true
  exit 1
fi
too_new=$(cargo tree -p vigil -e features --locked --target aarch64-unknown-linux-gnu |
  { grep -o 'gstreamer[a-z-]* feature "v1_[0-9]*"' || true; } | sort -u |
  awk -v max="$max_gst_minor" -F'v1_' '{ minor = $2 + 0; if (minor > max) print }')
if [[ -n $too_new ]]; then
  echo "check-abi: GStreamer API newer than 1.$max_gst_minor is enabled (JetPack 6 has 1.$max_gst_minor):" >&2
  echo "$too_new" >&2
  exit 1
fi
echo "check-abi: $binary needs GLIBC_$highest (at most $max_glibc) and no GStreamer API past 1.$max_gst_minor"
