#!/usr/bin/env bash
# Fuzz the JPEG DC reader (model/serving/jpegdc.c) for a bounded time, as CI does (.ci/run).
#
# The reader is built with AddressSanitizer and UndefinedBehaviorSanitizer and run under atheris
# (libFuzzer, coverage-guided on the C code) from the seed corpus tests/fuzz/corpus/, with the
# differential check of tests/fuzz/fuzz_jpegdc.py: a file the reader reads must give exactly Pillow's
# draft("L") pixels at 1/8 scale, and a file Pillow refuses must be refused by the reader.
# A memory error, undefined behaviour or divergence fails the script, with the input saved under
# test-artifacts/fuzz-jpegdc/. Installs clang (Debian, as root) and atheris (PyPI, into build/fuzz/)
# when missing. Needs the .venv of scripts/bootstrap.sh.
#
#   scripts/fuzz-jpegdc.sh [SECONDS]            fuzz for SECONDS (default $FUZZ_SECONDS, else 60)
#   scripts/fuzz-jpegdc.sh --repro FILE...      run the sanitized reader and the check on FILEs once
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "fuzz-jpegdc: $*" >&2; }

PY=.venv/bin/python
[ -x "$PY" ] || { say "no .venv: run scripts/bootstrap.sh first"; exit 2; }
build=build/fuzz
site=$build/site
artifacts=test-artifacts/fuzz-jpegdc
ATHERIS=atheris==3.0.0
mkdir -p "$build"

# clang with its sanitizer runtimes (Debian: clang, libclang-rt-N-dev; llvm for symbolized stacks).
probe() { echo 'int main(void){return 0;}' | clang -x c -fsanitize=address,undefined,fuzzer-no-link - -o "$build/probe" 2>/dev/null; }
if ! command -v clang >/dev/null 2>&1 || ! probe; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        say "needs clang with its sanitizer runtimes (apt-get install clang libclang-rt-14-dev llvm), and no root to install them"
        exit 2
    fi
    say "installing Debian's clang..."
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang llvm >&2
    if ! probe; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "libclang-rt-$(clang -dumpversion | cut -d. -f1)-dev" >&2
    fi
    probe || { say "clang cannot build with -fsanitize=address,undefined,fuzzer-no-link"; exit 2; }
fi

# atheris, beside the .venv rather than in it (only this script uses it).
if ! PYTHONPATH=$site "$PY" -c 'import atheris' 2>/dev/null; then
    say "installing $ATHERIS into $site..."
    "$PY" -m pip install --quiet --disable-pip-version-check --target "$site" "$ATHERIS" >&2
fi
preload="$(PYTHONPATH=$site "$PY" -c 'import atheris; print(atheris.path())')/asan_with_fuzzer.so"
[ -f "$preload" ] || { say "atheris has no $preload"; exit 2; }

# The sanitized reader, built each time (a second or two). JPEGDC_SRC fuzzes another source, e.g. an
# older jpegdc.c (git show REV:model/serving/jpegdc.c > /tmp/old.c), to see that the check catches what it should.
src=${JPEGDC_SRC:-model/serving/jpegdc.c}
so=$build/_jpegdc$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
include=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
clang -shared -fPIC -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined,fuzzer-no-link \
    -fno-sanitize-recover=all -I"$include" "$src" -o "$so.tmp"
mv "$so.tmp" "$so"

# Python's allocator off so that ASan sees every buffer (the input's bytes included); no leak
# report (the interpreter leaks at exit by design); UB aborts with a stack.
run() {
    LD_PRELOAD="$preload" PYTHONMALLOC=malloc PYTHONPATH="$site:." JPEGDC_SO="$so" \
        ASAN_OPTIONS=detect_leaks=0:symbolize=1:handle_abort=1 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        "$PY" tests/fuzz/fuzz_jpegdc.py "$@"
}

if [ "${1:-}" = --repro ]; then
    shift
    run -runs=1 "$@"
    exit
fi

seconds=${1:-${FUZZ_SECONDS:-60}}
rm -rf "$artifacts" "$build/corpus"
mkdir -p "$artifacts" "$build/corpus"
log=$artifacts/fuzz.log
say "fuzzing for ${seconds}s from $(ls tests/fuzz/corpus | wc -l) seeds (log: $log)"
set +e
# New inputs go to build/fuzz/corpus (the first directory); the checked-in seeds are only read.
run -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -max_len=65536 \
    -dict=tests/fuzz/jpeg.dict -print_final_stats=1 -artifact_prefix="$artifacts/" \
    "$build/corpus" tests/fuzz/corpus >"$log" 2>&1
status=$?
set -e
runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
found=$(find "$artifacts" -maxdepth 1 -type f ! -name fuzz.log | sort)
if [ "$status" != 0 ] || [ -n "$found" ]; then
    tail -n 60 "$log" >&2
    say "FAILED (exit $status): the reader crashed, hit undefined behaviour or read a file other than libjpeg."
    for f in $found; do say "  input saved: $f  (reproduce: scripts/fuzz-jpegdc.sh --repro $f)"; done
    [ -n "$found" ] || say "  no input was saved; the log is $log"
    exit 1
fi
say "ok: ${runs:-?} runs in ${took:-$seconds} s (${runs:+$((runs / (took > 0 ? took : 1)))} runs/s), no memory error, no UB, no divergence from Pillow's draft(\"L\")"
