#!/usr/bin/env bash
# Every benchmark of issue 7, one after the other (see BENCHMARKS.md at the repository root):
# the `ferrysync-tests` benches (sync: items 1-5, load: item 6, decode: item 7), then the flash
# adapter's own benches when it has any (item 2's flash part). Each prints markdown tables.
#
#   tests/benches/run.sh                                  # the default size (1,000 / 10,000)
#   FERRYSYNC_BENCH_SIZES=small,default,large tests/benches/run.sh
#   FERRYSYNC_LOAD_DEVICES=1,10 FERRYSYNC_LOAD_SECS=3 tests/benches/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench -p ferrysync-tests --benches
if compgen -G "adapter-flash/benches/*.rs" > /dev/null; then
    cargo bench -p ferrysync-flash --benches
fi
