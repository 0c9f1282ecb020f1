#!/usr/bin/env bash
# `make test`: runs each phase given, in order, and times it. A phase is one make target, or
# several joined by commas, which run at the same time (separate make processes, each with its
# output kept aside and printed whole when the group ends): a fresh machine's tool compiles use
# one core for minutes while the project's own lint and compile can use the other.
# At the end (a failed phase included) it prints one table of every target and its time, so a
# slow or failing step is visible in every CI log. It stops after the first phase that fails and
# exits with its status.
set -u
cd "$(dirname "$0")/.."
make_cmd=${MAKE:-make}
logs=target/phase-logs
mkdir -p "$logs"
rows=()
status=0
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
t_all=$(now_ms)
for phase in "$@"; do
  IFS=',' read -r -a targets <<<"$phase"
  t0=$(now_ms)
  if [ "${#targets[@]}" -eq 1 ]; then
    echo "::: phase ${phase}"
    "$make_cmd" --no-print-directory "$phase"
    s=$?
    rows+=("${phase}|$(( $(now_ms) - t0 ))|${s}")
    status=$s
  else
    echo "::: phase ${phase} (at the same time; each one's output follows when it ends)"
    pids=()
    for t in "${targets[@]}"; do
      ( start=$(now_ms); "$make_cmd" --no-print-directory "$t" >"$logs/$t.log" 2>&1; s=$?
        echo "$(( $(now_ms) - start )) $s" >"$logs/$t.result" ) &
      pids+=($!)
    done
    wait "${pids[@]}"
    for t in "${targets[@]}"; do
      echo "::: ${t}"
      cat "$logs/$t.log"
      read -r ms s <"$logs/$t.result"
      rows+=("  ${t}|${ms}|${s}")
      [ "$s" -ne 0 ] && [ "$status" -eq 0 ] && status=$s
    done
    rows+=("${phase//,/ + }|$(( $(now_ms) - t0 ))|${status}")
  fi
  [ "$status" -ne 0 ] && break
done
total=$(( $(now_ms) - t_all ))
echo
echo "make test: phase times (indented: the targets of a phase that ran at the same time)"
printf '%-40s %10s  %s\n' phase seconds result
for row in "${rows[@]}"; do
  IFS='|' read -r phase ms s <<<"$row"
  result=ok
  [ "$s" -ne 0 ] && result="FAILED (exit ${s})"
  printf '%-40s %10s  %s\n' "$phase" "$(awk -v ms="$ms" 'BEGIN { printf "%.1f", ms / 1000 }')" "$result"
done
printf '%-40s %10s\n' total "$(awk -v ms="$total" 'BEGIN { printf "%.1f", ms / 1000 }')"
exit "$status"
