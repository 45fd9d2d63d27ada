# Helpers for the tests that SIGKILL a training run at random moments (cli.sh resume,
# mpi.sh resume and killed); sourced, not run.

# stamp FILE: its modification time in nanoseconds, or 0 when it does not exist.
stamp() { stat -c %.9Y "$1" 2>/dev/null | tr -d . || echo 0; }

# wait_for_new FILE STAMP PID: polls until FILE's stamp differs from STAMP or PID is gone.
wait_for_new() {
  while kill -0 "$3" 2>/dev/null && [ "$(stamp "$1")" = "$2" ]; do sleep 0.01; done
}

# kill_delay METRICS EVERY: a random moment, in seconds, within one checkpoint interval of
# the uninterrupted run whose metrics.csv is METRICS (its epochs' seconds over its
# checkpoints, EVERY steps apart). A kill that waits that long after a new checkpoint lands
# before the run's end however fast the machine, yet anywhere in the interval, possibly
# during the next save: a fixed delay either lets a fast run finish first or never reaches
# a slow run's next save.
kill_delay() {
  awk -F, -v every="$2" -v seed="$RANDOM" '
    NR == 1 { for (i = 1; i <= NF; i++) { if ($i == "seconds") s = i; if ($i == "step") t = i } }
    NR > 1 { secs += $s; steps = $t }
    END { srand(seed); if (steps < every) exit 1; printf "%.3f\n", rand() * secs * every / steps }' "$1"
}
