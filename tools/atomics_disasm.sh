#!/usr/bin/env bash
# Shows the machine code V8 runs for Atomics.load, Atomics.store and
# Atomics.add on a non-shared Uint16Array/Uint32Array (what ivsock's ring
# indices use), by attaching gdb to a running deno and disassembling the
# builtins named in V8's perf map. Evidence for docs/memory-ordering.md.
# Needs gdb (Debian package gdb). Usage: tools/atomics_disasm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
deno=${DENO:-.tools/node_modules/.bin/deno}
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

cat >"$work/spin.ts" <<'TS'
const ab = new ArrayBuffer(4096);
const u16 = new Uint16Array(ab);
const u32 = new Uint32Array(ab);
function ivsockStore(i: number, v: number) { Atomics.store(u16, i, v); }
function ivsockLoad(i: number) { return Atomics.load(u16, i); }
function ivsockFence() { return Atomics.add(u32, 100, 0); }
let s = 0;
for (let k = 0; k < 5e6; k++) { ivsockStore(k & 7, k); s += ivsockLoad((k + 1) & 7); s += ivsockFence(); }
console.log(`ready ${Deno.pid} ${s}`);
await new Promise((r) => setTimeout(r, 30_000));
TS

"$deno" run --v8-flags=--perf-basic-prof "$work/spin.ts" >"$work/out" 2>&1 &
pid=$!
for _ in $(seq 1 100); do grep -q ready "$work/out" && break; sleep 0.1; done
dpid=$(awk '/ready/ {print $2}' "$work/out")
map=/tmp/perf-$dpid.map
echo "deno $("$deno" --version | head -1), $(uname -m)"
for b in AtomicsLoad AtomicsStore AtomicsAdd; do
  read -r addr size _ < <(grep " Builtin:$b\$" "$map")
  echo "== Builtin:$b: memory-access instructions"
  gdb -batch -p "$dpid" -ex "x/$((0x$size / 3))i 0x$addr" 2>/dev/null |
    grep -E 'xchg|lock|mfence|ldar|stlr|ldax|stlx|ldadd|dmb|movzwl +\(' | sed 's/^ *//' | sort -u -k2 | head -8
done
echo "== optimized callers call the builtins (not inlined) for non-shared buffers:"
grep -E "JS:\*'ivsock" "$map" | awk '{print $3, $4}'
rm -f "$map"
