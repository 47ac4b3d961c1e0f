#!/bin/bash
# run.sh - run the fuzz targets built in build/ (called by the Makefile).
#   run.sh fuzz    TARGET:ARGS ...   fuzz each target for $FUZZ_TIME seconds
#   run.sh regress TARGET:ARGS ...   run saved inputs once
# ARGS are extra libFuzzer flags of the target (e.g. -max_len=4096).
#
# fuzz: a scratch corpus build/corpus/<t> starts as a copy of corpus/<t>
# (the repository's seeds are never written) and keeps what the run
# finds; crashes go to build/crash/<t>/, the log to build/log/<t>.log.
# FUZZ_JOBS targets (default: one per CPU) run at once, each a single
# libFuzzer process on one core, so a run of every target takes about
# its share of the cores' time, not the sum. One line per target, in the
# order given, once all are done: executions, executions per second,
# result. Exit 1 if any target crashed (the log's report is shown).
#
# regress: every file of regressions/<t>/ and corpus/<t>/ runs once and
# must pass, except regressions/<t>/open-*: known findings not fixed yet,
# run with their checks on (FUZZ_OPEN=1, no UBSan suppressions). They are
# expected to fail; one that passes is reported as fixed (rename it
# without open- so that it guards the fix), and neither fails the run.
set -u
cd "$(dirname "$0")" || exit 2
mode=$1
shift
: "${FUZZ_TIME:=60}" "${FUZZ_TIMEOUT:=10}" "${FUZZ_RSS:=2048}"
: "${FUZZ_ARGS:=}"
failed=""
mkdir -p build/log build/crash build/corpus

# Value of a libFuzzer final stat ("stat::name: value") in a log.
stat() {
    sed -n "s/^stat::$1: *//p" "$2" | tail -n 1
}

# One target's run; its summary lines go to stdout (build/log/<t>.sum
# when run beside others), a crash leaves build/log/<t>.failed.
fuzz_one() {
    t=$1 args=$2
    log=build/log/$t.log
    rm -f "build/log/$t.failed"
    mkdir -p "build/corpus/$t" "build/crash/$t"
    if [ -d "corpus/$t" ]; then
        cp -p corpus/"$t"/* "build/corpus/$t/" 2>/dev/null
    fi
    dict=""
    [ -f "$t.dict" ] && dict="-dict=$t.dict"
    start=$(date +%s)
    # shellcheck disable=SC2086
    "build/fuzz_$t" -max_total_time="$FUZZ_TIME" -timeout="$FUZZ_TIMEOUT" \
        -rss_limit_mb="$FUZZ_RSS" -print_final_stats=1 \
        -artifact_prefix="build/crash/$t/" $dict $args $FUZZ_ARGS \
        "build/corpus/$t" >"$log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    execs=$(stat number_of_executed_units "$log")
    rate=$(stat average_exec_per_sec "$log")
    if [ $rc -eq 0 ]; then
        result=ok
    else
        result="FAILED (exit $rc)"
        : >"build/log/$t.failed"
    fi
    printf '%-12s %12s execs %9s exec/s %5ss  %s\n' "$t" "${execs:-?}" \
        "${rate:-?}" "$secs" "$result"
    if [ $rc -ne 0 ]; then
        grep -E -m 40 -A 12 'ERROR|invariant failed|runtime error|SUMMARY' \
            "$log" | head -n 40 | sed 's/^/    /'
        for a in build/crash/"$t"/*; do
            [ -f "$a" ] && echo "    input: tests/fuzz/$a"
        done
        echo "    reproduce: tests/fuzz/build/fuzz_$t <input>"
    fi
}

regress_one() {
    t=$1 args=$2
    log=build/log/$t.regress.log
    files="" open=""
    for f in regressions/"$t"/* corpus/"$t"/*; do
        [ -f "$f" ] || continue
        case "${f##*/}" in
        open-*) open="$open $f" ;;
        README*) ;;
        *) files="$files $f" ;;
        esac
    done
    n=0 bad=0
    if [ -n "$files" ]; then
        # One run for all; on a failure, one run per file to name it.
        # shellcheck disable=SC2086
        if ! "build/fuzz_$t" -timeout="$FUZZ_TIMEOUT" $args $files \
            >"$log" 2>&1; then
            for f in $files; do
                # shellcheck disable=SC2086
                if ! "build/fuzz_$t" -timeout="$FUZZ_TIMEOUT" $args "$f" \
                    >"$log.one" 2>&1; then
                    bad=$((bad + 1))
                    echo "$t: FAILED: tests/fuzz/$f"
                    grep -E -m 3 -A 6 'ERROR|invariant failed|runtime error' \
                        "$log.one" | head -n 12 | sed 's/^/    /'
                fi
            done
        fi
        n=$(echo $files | wc -w)
    fi
    still=0 fixed=0
    for f in $open; do
        # shellcheck disable=SC2086
        if FUZZ_OPEN=1 UBSAN_OPTIONS=suppressions=/dev/null \
            "build/fuzz_$t" -timeout="$FUZZ_TIMEOUT" $args "$f" \
            >"$log.open" 2>&1; then
            fixed=$((fixed + 1))
            echo "$t: open finding no longer fails: tests/fuzz/$f" \
                "(fixed? remove 'open-' from its name and its ubsan.supp line)"
        else
            still=$((still + 1))
        fi
    done
    printf '%-12s %4d inputs passed, %d failed; %d open finding(s) still open\n' \
        "$t" $((n - bad)) "$bad" "$still"
    [ $bad -eq 0 ] || failed="$failed $t"
}

case $mode in
fuzz | regress) ;;
*) echo "usage: $0 fuzz|regress TARGET:ARGS ..." >&2; exit 2 ;;
esac
: "${FUZZ_JOBS:=$(nproc 2>/dev/null || echo 1)}"
running=0
for spec in "$@"; do
    t=${spec%%:*}
    args=${spec#*:}
    if [ "$mode" = regress ]; then
        regress_one "$t" "$args"
        continue
    fi
    if [ "$running" -ge "$FUZZ_JOBS" ]; then
        wait -n
        running=$((running - 1))
    fi
    fuzz_one "$t" "$args" >"build/log/$t.sum" &
    running=$((running + 1))
done
if [ "$mode" = fuzz ]; then
    wait
    for spec in "$@"; do
        t=${spec%%:*}
        cat "build/log/$t.sum"
        [ -e "build/log/$t.failed" ] && failed="$failed $t"
    done
fi
if [ -n "$failed" ]; then
    echo "fuzz $mode: FAILED:$failed"
    exit 1
fi
echo "fuzz $mode: ok"
