# Sourced by scripts/bench-daemon and scripts/bench-events (bash): a work directory removed on exit, the
# AWS emulator and the Azure stub started on loopback, and giving up at once, with the reason, when the
# benchmark can no longer reach its end (a process exited, instances reported failed, no progress), instead
# of polling out its time.

work=$(mktemp -d)
pids=()
declare -A watched=()   # name -> pid of each process the benchmark needs alive
# BENCH_KEEP=DIR: the work directory (logs, state file) is copied there on exit.
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "${BENCH_KEEP:-}" ]; then rm -rf "$BENCH_KEEP"; cp -r "$work" "$BENCH_KEEP"; fi
  rm -rf "$work"
}
trap cleanup EXIT

# give_up REASON...: says why on stderr with the last lines of each log, and exits 1.
give_up() {
  echo "bench: giving up: $*" >&2
  for log in daemon aws azure; do
    if [ -s "$work/$log.log" ]; then
      echo "--- last lines of $log.log:" >&2
      tail -n 5 "$work/$log.log" >&2
    fi
  done
  exit 1
}

# watch NAME PID: check_alive gives up when it has exited.
watch() { watched[$1]=$2; pids+=("$2"); }

# check_alive: gives up, naming it and its exit status, when a watched process has exited.
check_alive() {
  local name pid status
  for name in "${!watched[@]}"; do
    pid=${watched[$name]}
    if ! kill -0 "$pid" 2>/dev/null; then
      status=0; wait "$pid" 2>/dev/null || status=$?
      give_up "the $name process exited (status $status)"
    fi
  done
}

# start NAME SCRIPT: a server of the test kit on a free loopback port; its URL is in $work/NAME.out.
start() {
  .venv/bin/python "$2" --host 127.0.0.1 --port 0 > "$work/$1.out" 2> "$work/$1.log" &
  watch "$1" $!
  for _ in $(seq 200); do grep -q LISTENING "$work/$1.out" 2>/dev/null && return; sleep 0.1; done
  check_alive
  give_up "$1 ($2) did not say LISTENING within 20 s"
}

# Stall: no progress for this many polls means the benchmark cannot end (BENCH_STALL_POLLS).
stall_polls=${BENCH_STALL_POLLS:-120}
