#!/usr/bin/env bash
# Installs libkiln for C, C++, Go (cgo) and other callers, laid out as a distribution package:
#   $PREFIX/lib/libkiln.so.<ABI major>   (the soname programs record)
#   $PREFIX/lib/libkiln.so -> libkiln.so.<ABI major>   (what `-lkiln` finds at link time)
#   $PREFIX/lib/libkiln.a
#   $PREFIX/include/kiln.h
#   $PREFIX/lib/pkgconfig/kiln.pc        (`pkg-config --cflags --libs [--static] kiln`)
# Usage: scripts/install-libkiln.sh --from target/release --prefix /usr/local [--destdir DIR]
# `make install PREFIX=...` builds the release library first and calls this. DESTDIR stages
# an install (as packagers do): files go under $DESTDIR$PREFIX, kiln.pc still names $PREFIX.
set -euo pipefail
cd "$(dirname "$0")/.."

from="" prefix="" destdir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --from) from="$2"; shift 2 ;;
    --prefix) prefix="$2"; shift 2 ;;
    --destdir) destdir="$2"; shift 2 ;;
    *) echo "install-libkiln: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$from" ] && [ -n "$prefix" ] || { echo "usage: $0 --from DIR --prefix PREFIX [--destdir DIR]" >&2; exit 2; }
case "$prefix" in /*) ;; *) echo "install-libkiln: --prefix must be absolute" >&2; exit 2 ;; esac
for f in libkiln.so libkiln.a; do
  [ -f "$from/$f" ] || { echo "install-libkiln: $from/$f is missing (cargo build --release -p kiln-ffi)" >&2; exit 1; }
done

header=crates/bindings/include/kiln.h
major=$(sed -n 's/^#define KILN_ABI_MAJOR \([0-9]*\)$/\1/p' "$header")
minor=$(sed -n 's/^#define KILN_ABI_MINOR \([0-9]*\)$/\1/p' "$header")
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[ -n "$major" ] && [ -n "$minor" ] && [ -n "$version" ] || { echo "install-libkiln: cannot read the ABI or crate version" >&2; exit 1; }

root="$destdir$prefix"
install -d "$root/lib/pkgconfig" "$root/include"
install -m 0755 "$from/libkiln.so" "$root/lib/libkiln.so.$major"
ln -sfn "libkiln.so.$major" "$root/lib/libkiln.so"
install -m 0644 "$from/libkiln.a" "$root/lib/libkiln.a"
install -m 0644 "$header" "$root/include/kiln.h"
# Libs.private: what the Rust static archive needs from the system (the list
# `cargo rustc -p kiln-ffi --crate-type staticlib -- --print native-static-libs` prints).
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" -e "s|@ABI@|$major.$minor|" \
  scripts/kiln.pc.in > "$root/lib/pkgconfig/kiln.pc"
echo "install-libkiln: libkiln $version (ABI $major.$minor) installed under $root"
