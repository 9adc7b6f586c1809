#!/usr/bin/env bash
# Builds the real-guest test image: a Debian cloud kernel and an initramfs
# holding busybox, the pinned deno binary, ivsock's sources (everything
# `mod.ts guest` imports) and a Deno cache holding the npm packages that
# deno.json pins, so the guest runs ivsock with no network.
#
#   tests/e2e/build_guest.sh [GUEST_SRC_DIR]
#
# GUEST_SRC_DIR is the guest-side program (shipped as /ivsock/guest); it
# defaults to guest/ at the repo root when that exists. The result lands in
# tests/e2e/.cache/<hash>/, keyed by a hash of every input, so a second run
# with the same inputs only prints the paths. Progress goes to stderr; stdout
# ends with the two lines KERNEL=<path> and INITRD=<path>.
#
# Environment:
#   IVSOCK_KERNEL_PKG  kernel package to use instead of the pinned default
#   IVSOCK_DENO        deno binary to ship (default: the one in .tools/)
#
# Needs: bash, coreutils, findutils, apt-get/apt-cache/dpkg-deb (to download
# and unpack .debs), cpio and lz4 (installed with apt-get when missing), and
# root only for that install and for apt-get update. The first run downloads
# the npm packages (deno cache) into tests/e2e/.cache/deno-dir/.
set -euo pipefail

e2e_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$e2e_dir/../.." && pwd)
cache="$e2e_dir/.cache"
debs="$cache/debs"
# The host-side Deno cache whose npm/ folder the guest gets as its DENO_DIR.
deno_dir="$cache/deno-dir"

# What the guest needs of the repo to run `deno run mod.ts guest ...`: the
# entry point, its imports (deps.ts -> hono, zod), the config and lockfile,
# and the folders the CLI's guest command reaches. No tests and no admin/
# (only `serve` imports that, and only when it runs).
SHIPPED_FILES=(mod.ts deps.ts deno.json deno.lock)
SHIPPED_DIRS=(cli config device guest proxy)

# The kernel chosen when this rig was written: the newest
# linux-image-*-cloud-amd64 that bookworm's apt-cache offered. Pinned so that
# an apt-get update does not silently change the guest; if the archive drops
# it (security updates replace old ABIs), the newest offered one is used
# instead, with a warning.
PINNED_KERNEL_PKG="linux-image-6.12.117+deb12-cloud-amd64"

log() { printf 'build_guest: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# --- inputs ---------------------------------------------------------------

guest_src=""
if [ $# -gt 1 ]; then
  die "expected at most one argument (the guest source directory), got $#"
elif [ $# -eq 1 ]; then
  [ -d "$1" ] || die "guest source directory $1 does not exist"
  guest_src=$(cd "$1" && pwd)
elif [ -d "$repo/guest" ]; then
  guest_src="$repo/guest"
fi

deno_bin=${IVSOCK_DENO:-"$repo/.tools/node_modules/@deno/linux-x64-glibc/deno"}
# Follow the npm shim to the real ELF binary: the guest has no node.
deno_bin=$(readlink -f "$deno_bin")
[ -x "$deno_bin" ] || die "deno binary $deno_bin not found; run: npm install --prefix .tools"
file_magic=$(head -c 4 "$deno_bin" | od -An -c | tr -d ' ')
[ "$file_magic" = '177ELF' ] || die "expected $deno_bin to be an ELF binary, found magic '$file_magic'"

for f in "${SHIPPED_FILES[@]}"; do
  [ -f "$repo/$f" ] || die "expected $repo/$f to exist"
done
for d in "${SHIPPED_DIRS[@]}"; do
  [ -d "$repo/$d" ] || die "expected $repo/$d to exist"
done

# The npm packages, fetched by the deno being shipped so the cache layout is
# the one it reads. --frozen: the build never rewrites deno.lock. A cache that
# is already complete answers in a tenth of a second without the network.
if ! cache_log=$(DENO_DIR="$deno_dir" DENO_NO_UPDATE_CHECK=1 NO_COLOR=1 \
  "$deno_bin" cache --frozen "$repo/mod.ts" 2>&1); then
  printf '%s\n' "$cache_log" >&2
  die "deno cache mod.ts failed (the first run needs registry.npmjs.org)"
fi
[ -d "$deno_dir/npm" ] || die "deno cache left no $deno_dir/npm"

# "<package> <candidate version>" for each package apt-cache offers. One call
# for all of them: each apt-cache run costs most of a second here. It answers
# from local lists, so only a machine that never ran apt-get update pays for
# one below.
candidates() {
  apt-cache policy "$@" 2>/dev/null |
    awk '/^[^ ]/ { sub(/:$/, ""); pkg = $0 } /^  Candidate: / && $2 != "(none)" { print pkg, $2 }'
}

# The newest linux-image-<abi>-cloud-amd64 on offer, as "<package> <version>".
# ABI packages only (three-part version), not the linux-image-cloud-amd64 or
# linux-image-6.12-cloud-amd64 meta-packages.
newest_cloud_kernel() {
  local best="" best_ver="" pkg ver
  while read -r pkg ver; do
    if [ -z "$best" ] || dpkg --compare-versions "$ver" gt "$best_ver"; then
      best=$pkg
      best_ver=$ver
    fi
  done < <(candidates $(apt-cache pkgnames linux-image- |
    grep -E '^linux-image-[0-9]+\.[0-9]+\.[0-9]+[-+][^-]*-cloud-amd64$'))
  [ -z "$best" ] || printf '%s %s\n' "$best" "$best_ver"
}

version_of() { awk -v p="$1" '$1 == p { print $2 }' <<<"$2"; }

kernel_pkg=${IVSOCK_KERNEL_PKG:-$PINNED_KERNEL_PKG}
offered=$(candidates "$kernel_pkg" busybox-static)
if [ -z "$(version_of "$kernel_pkg" "$offered")" ] || [ -z "$(version_of busybox-static "$offered")" ]; then
  log "apt-cache offers no $kernel_pkg or no busybox-static; running apt-get update"
  apt-get update -q >&2 || die "apt-get update failed"
  offered=$(candidates "$kernel_pkg" busybox-static)
fi
kernel_ver=$(version_of "$kernel_pkg" "$offered")
if [ -z "$kernel_ver" ]; then
  [ -z "${IVSOCK_KERNEL_PKG:-}" ] || die "apt-cache offers no package $kernel_pkg (from IVSOCK_KERNEL_PKG)"
  newest=$(newest_cloud_kernel)
  [ -n "$newest" ] || die "apt-cache offers no linux-image-*-cloud-amd64 package"
  log "warning: pinned kernel $kernel_pkg is no longer offered; using the newest, ${newest% *}"
  kernel_pkg=${newest% *}
  kernel_ver=${newest#* }
fi
busybox_ver=$(version_of busybox-static "$offered")
[ -n "$busybox_ver" ] || die "apt-cache offers no busybox-static"

# "<prefix><path> <sha256>" for every file under DIR (relative to DIR), in
# byte order, leaving out tests.
hash_tree() {
  local dir=$1 prefix=$2
  (cd "$dir" && find . -type f ! -name '*_test.ts' -print0 | LC_ALL=C sort -z |
    xargs -0 -r sha256sum | awk -v p="$prefix" '{ sub(/^\.\//, "", $2); print p $2 " " $1 }')
}

# Every file shipped under /ivsock and /deno-dir, as "<path in guest>
# <sha256>" lines.
source_manifest() {
  local rel
  {
    for rel in "${SHIPPED_FILES[@]}"; do
      printf '/ivsock/%s %s\n' "$rel" "$(sha256sum <"$repo/$rel" | cut -d' ' -f1)"
    done
    for rel in "${SHIPPED_DIRS[@]}"; do
      # guest/ may come from GUEST_SRC_DIR instead (below).
      [ "$rel" = guest ] && continue
      hash_tree "$repo/$rel" "/ivsock/$rel/"
    done
    if [ -n "$guest_src" ]; then
      hash_tree "$guest_src" /ivsock/guest/
    fi
    # The rig's own guest programs (guest_probe.ts and any later guest_*.ts;
    # not the host-side guest_*_test.ts).
    (cd "$repo" && find tests/e2e -maxdepth 1 -type f -name 'guest_*.ts' ! -name '*_test.ts' -print0 |
      LC_ALL=C sort -z | xargs -0 -r sha256sum | awk '{ print "/ivsock/" $2 " " $1 }')
    hash_tree "$deno_dir/npm" /deno-dir/npm/
  }
}

manifest=$(
  printf 'script %s\n' "$(sha256sum <"${BASH_SOURCE[0]}" | cut -d' ' -f1)"
  printf 'kernel %s %s\n' "$kernel_pkg" "$kernel_ver"
  printf 'busybox busybox-static %s\n' "$busybox_ver"
  printf 'deno %s\n' "$(sha256sum <"$deno_bin" | cut -d' ' -f1)"
  source_manifest
)
hash=$(printf '%s\n' "$manifest" | sha256sum | cut -c1-16)
out="$cache/$hash"

if [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ]; then
  log "cached: $out ($kernel_pkg $kernel_ver)"
  printf 'KERNEL=%s\nINITRD=%s\n' "$out/vmlinuz" "$out/initrd.img"
  exit 0
fi

# --- build ----------------------------------------------------------------

start=$(date +%s.%N)
log "building $out"
log "  kernel  $kernel_pkg $kernel_ver"
log "  busybox busybox-static $busybox_ver"
log "  deno    $deno_bin"
log "  guest   ${guest_src:-(none)}"

# cpio packs the image; lz4 compresses it (see the end for why lz4).
missing=()
command -v cpio >/dev/null || missing+=(cpio)
command -v lz4 >/dev/null || missing+=(lz4)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 ||
    die "apt-get install ${missing[*]} failed"
fi

mkdir -p "$debs"
# Prints the path of NAME_VERSION's .deb, downloading it on first use.
fetch_deb() {
  local name=$1 version=$2 found=""
  local f
  for f in "$debs/${name}"_*.deb; do
    [ -f "$f" ] || continue
    if [ "$(dpkg-deb -f "$f" Package)" = "$name" ] && [ "$(dpkg-deb -f "$f" Version)" = "$version" ]; then
      found=$f
    fi
  done
  if [ -z "$found" ]; then
    log "downloading $name=$version"
    # apt-get download writes into the current directory: a directory of our
    # own, so that a build running beside this one never sees a partial
    # file. As root it warns that the _apt user cannot write there, which is
    # harmless.
    local dl
    dl=$(mktemp -d "$debs/.download.XXXXXX")
    (cd "$dl" && apt-get download -q "$name=$version" 2>&1) |
      { grep -v 'unsandboxed as root' || true; } >&2 ||
      die "apt-get download $name=$version failed"
    for f in "$dl"/*.deb; do
      [ -f "$f" ] || continue
      mv "$f" "$debs/"
      found="$debs/${f##*/}"
    done
    rmdir "$dl"
    [ -n "$found" ] || die "apt-get download $name=$version left no .deb"
  fi
  printf '%s\n' "$found"
}

kernel_deb=$(fetch_deb "$kernel_pkg" "$kernel_ver")
busybox_deb=$(fetch_deb busybox-static "$busybox_ver")

# Build beside the final directory and rename at the end, so that an
# interrupted or concurrent build never leaves a half-written cache entry.
work=$(mktemp -d "$cache/$hash.tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$work/kpkg" "$work/bbpkg" "$root"

dpkg-deb -x "$kernel_deb" "$work/kpkg"
dpkg-deb -x "$busybox_deb" "$work/bbpkg"
bb="$work/bbpkg/bin/busybox"
[ -x "$bb" ] || die "expected busybox-static to ship bin/busybox"

vmlinuz=$(find "$work/kpkg/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n 1)
[ -n "$vmlinuz" ] || die "expected $kernel_deb to ship boot/vmlinuz-*"
kver=${vmlinuz##*/vmlinuz-}

# Filesystem skeleton. /sbin and /usr/* point at /bin so that every applet
# and any "#!/usr/bin/env" line resolves.
mkdir -p "$root"/{bin,dev,etc,lib/x86_64-linux-gnu,lib64,proc,root,sys,tmp,ivsock}
ln -s bin "$root/sbin"
mkdir -p "$root/usr"
ln -s ../bin "$root/usr/bin"
ln -s ../bin "$root/usr/sbin"
cp "$bb" "$root/bin/busybox"
for applet in $("$bb" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done

# deno and the libraries the dynamic loader will look for. The host is the
# same Debian release as the packages, so its glibc is what deno was
# checked against here.
cp "$deno_bin" "$root/bin/deno"
ldd "$deno_bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
  while read -r lib; do
    case "$lib" in
    /lib64/*) cp -L "$lib" "$root/lib64/" ;;
    *) cp -L "$lib" "$root/lib/x86_64-linux-gnu/" ;;
    esac
  done
[ -f "$root/lib64/ld-linux-x86-64.so.2" ] || die "ldd listed no /lib64/ld-linux-x86-64.so.2 for $deno_bin"

# Kernel modules that a test may load (uio for interrupts, vsock to compare
# with the in-kernel transport). Decompressed here so that busybox modprobe
# needs no xz support, and indexed with busybox depmod.
moddir="lib/modules/$kver"
mkdir -p "$root/$moddir/kernel/drivers" "$root/$moddir/kernel/net"
cp -a "$work/kpkg/$moddir/kernel/drivers/uio" "$root/$moddir/kernel/drivers/"
cp -a "$work/kpkg/$moddir/kernel/net/vmw_vsock" "$root/$moddir/kernel/net/"
cp "$work/kpkg/$moddir"/modules.* "$root/$moddir/"
find "$root/$moddir/kernel" -name '*.ko.xz' -exec "$bb" unxz {} +
"$bb" depmod -b "$root" "$kver"

# Sources, under /ivsock like the repo root, so relative imports such as
# guest/ -> ../device/ resolve the same way as on the host. Copied by the
# same file list the manifest hashed (tests left out).
ship_tree() {
  local from=$1 to=$2
  mkdir -p "$to"
  (cd "$from" && find . -type f ! -name '*_test.ts' -print0 |
    cpio --null --pass-through --make-directories --quiet "$to")
}
for rel in "${SHIPPED_FILES[@]}"; do
  cp "$repo/$rel" "$root/ivsock/"
done
for rel in "${SHIPPED_DIRS[@]}"; do
  [ "$rel" = guest ] && continue
  ship_tree "$repo/$rel" "$root/ivsock/$rel"
done
if [ -n "$guest_src" ]; then
  ship_tree "$guest_src" "$root/ivsock/guest"
fi
mkdir -p "$root/ivsock/tests/e2e"
find "$repo/tests/e2e" -maxdepth 1 -type f -name 'guest_*.ts' ! -name '*_test.ts' \
  -exec cp {} "$root/ivsock/tests/e2e/" \;
# The npm packages only: the rest of a DENO_DIR (emitted JavaScript, analysis
# caches) is keyed by the host's file paths and useless in the guest.
ship_tree "$deno_dir/npm" "$root/deno-dir/npm"
printf '%s\n' "$manifest" >"$root/ivsock/MANIFEST"

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
EOF
cat >"$root/etc/hosts" <<'EOF'
127.0.0.1 localhost
::1 localhost
EOF

cat >"$root/init" <<'EOF'
#!/bin/sh
# ivsock e2e guest: mount the basics, run the base64 command from
# ivsock.cmd= on the kernel command line, report its status, power off.
export PATH=/bin HOME=/root TERM=dumb NO_COLOR=1
# Deno: the cache built on the host (npm packages for deps.ts; the root
# filesystem is a writable initramfs, so Deno adds its own files there), no
# update check (there is no network), and no permission prompt (the console
# is a tty, so a prompt would hang the run).
export DENO_DIR=/deno-dir DENO_NO_UPDATE_CHECK=1 DENO_NO_PROMPT=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /dev/shm /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t devpts devpts /dev/pts
ip link set lo up
echo "IVSOCK-GUEST-READY"

enc=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in
  ivsock.cmd=*) enc=${arg#ivsock.cmd=} ;;
  esac
done
cd /ivsock
if [ -n "$enc" ]; then
  printf '%s' "$enc" | base64 -d >/tmp/ivsock-cmd.sh
  sh /tmp/ivsock-cmd.sh
  status=$?
else
  # No command: an interactive shell on the console, for poking around.
  setsid cttyhack sh
  status=$?
fi
# Start on a fresh line whatever the command printed last.
printf '\nIVSOCK-GUEST-EXIT %d\n' "$status"
poweroff -f
EOF
chmod 755 "$root/init"

mkdir -p "$work/out"
cp "$vmlinuz" "$work/out/vmlinuz"
# lz4 in the kernel's legacy framing (-l): under TCG the guest unpacks gzip
# about 1.3 s slower than lz4 (which is as fast as no compression at all),
# and lz4 still saves 40% of the disk.
(cd "$root" && find . -print0 | LC_ALL=C sort -z |
  cpio --null --create --format=newc --owner=0:0 --quiet | lz4 -l -1 -q >"$work/out/initrd.img")
printf '%s\n' "$manifest" >"$work/out/manifest.txt"

rm -rf "$out"
mv "$work/out" "$out"

# Scratch left by a build that was killed (a finished one removes its own).
find "$cache" -maxdepth 1 -name '*.tmp.*' -mmin +60 -exec rm -rf {} +

# Keep the newest few entries: every change to device/ makes a new one, and
# each is about 70 MB.
keep=3
ls -1dt "$cache"/*/ 2>/dev/null | grep -E '/[0-9a-f]{16}/$' | tail -n +$((keep + 1)) |
  while read -r old; do
    log "removing old cache entry $old"
    rm -rf "$old"
  done
end=$(date +%s.%N)
log "built in $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }') s:" \
  "vmlinuz $(du -h "$out/vmlinuz" | cut -f1), initrd.img $(du -h "$out/initrd.img" | cut -f1)" \
  "($(du -sh "$root" | cut -f1) unpacked)"
printf 'KERNEL=%s\nINITRD=%s\n' "$out/vmlinuz" "$out/initrd.img"
