#!/usr/bin/env bash
# `make test`: runs each make target given, in order, and times it. At the end (a failed phase
# included) it prints one table of the phases and their times, so a slow or failing step is
# visible in every CI log. It stops at the first phase that fails and exits with its status.
set -u
cd "$(dirname "$0")/.."
make_cmd=${MAKE:-make}
rows=()
status=0
t_all=$(date +%s%N)
for phase in "$@"; do
  t0=$(date +%s%N)
  echo "::: phase ${phase}"
  "$make_cmd" --no-print-directory "$phase"
  status=$?
  secs=$(( ($(date +%s%N) - t0) / 1000000 ))
  if [ "$status" -eq 0 ]; then rows+=("${phase}|${secs}|ok"); else rows+=("${phase}|${secs}|FAILED (exit ${status})"); break; fi
done
total=$(( ($(date +%s%N) - t_all) / 1000000 ))
echo
echo "make test: phase times"
printf '%-18s %10s  %s\n' phase seconds result
for row in "${rows[@]}"; do
  IFS='|' read -r phase ms result <<<"$row"
  printf '%-18s %10s  %s\n' "$phase" "$(awk -v ms="$ms" 'BEGIN { printf "%.1f", ms / 1000 }')" "$result"
done
printf '%-18s %10s\n' total "$(awk -v ms="$total" 'BEGIN { printf "%.1f", ms / 1000 }')"
exit "$status"
