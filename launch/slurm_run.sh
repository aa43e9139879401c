# Shared by the sonodistill sbatch scripts (sourced, after they set REPO): the environment of a job
# step, the part of an array task, and one step run to its end, requeued when it stopped on a signal.
#
# sonodistill_run LABEL COMMAND...   runs COMMAND (an srun line) in the background and waits for it.
#   SLURM's stop signals also reach this script (a preemption sends SIGTERM to every process of the
#   job): they are trapped, so the script lives until the step has kept its work. Exit code 75 from
#   the step (EX_TEMPFAIL: stopped by a signal, work kept) requeues the job (`scontrol requeue`; the
#   requeued job keeps its id, its array index and its arguments, and continues), unless the job was
#   cancelled (`scancel`: it stays cancelled); any other code ends the job with it (2: bad input,
#   one `error:` line in the log).
# sonodistill_cancelled INFO         whether `scontrol --oneliner show job` output INFO is a job the
#   user cancelled.
# sonodistill_restarts INFO          the restart count in that output (0 when absent).
# sonodistill_part                   prints I/N for an array task (I from 0, whatever the range's
#   first index), nothing for a plain job; fails on an --array list that is not a range, or of one task.
# sonodistill_given_part ARGS...     the part given on the command line (a part rerun as a plain job).

set -u
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
EXIT_PREEMPTED=75
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# the task's CPUs, whatever the submitting shell exported (sbatch passes its environment on)
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-${OMP_NUM_THREADS:-1}}
# srun takes the job's --cpus-per-task from this since SLURM 22.05 (else each step's task gets one
# CPU, and binding puts its loader workers and threads on it)
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
  export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
fi
if ! command -v "$PYTHON" >/dev/null; then
  echo "sonodistill: error: no Python at $PYTHON (run \`make venv\` in $REPO, or set PYTHON=/path/to/python)" >&2
  exit 2
fi

sonodistill_part() {
  [ -n "${SLURM_ARRAY_TASK_COUNT:-}" ] || return 0
  local first=${SLURM_ARRAY_TASK_MIN:-0} last=${SLURM_ARRAY_TASK_MAX:-0} step=${SLURM_ARRAY_TASK_STEP:-1}
  if [ "$SLURM_ARRAY_TASK_COUNT" -eq 1 ]; then  # --array=2 again: its N is lost, it would run part 0/1
    echo "sonodistill: error: sbatch --array=${SLURM_ARRAY_TASK_ID}: a one-task array cannot tell how many parts there are; rerun one part as a plain job with its part on the command line (docs/cluster.md)" >&2
    return 2
  fi
  if [ $(((last - first) / step + 1)) -ne "$SLURM_ARRAY_TASK_COUNT" ]; then
    echo "sonodistill: error: sbatch --array: give a range such as --array=0-15 (tasks ${first}..${last} step ${step} are not ${SLURM_ARRAY_TASK_COUNT} parts)" >&2
    return 2
  fi
  echo "$(((SLURM_ARRAY_TASK_ID - first) / step))/${SLURM_ARRAY_TASK_COUNT}"
}

# sonodistill_given_part ARGS...: the I/N of a `part=I/N`, `--part I/N` or `--part=I/N` among ARGS
# (a part rerun as a plain job), for the first log line.
sonodistill_given_part() {
  local next=""
  for a in "$@"; do
    [ -n "$next" ] && { echo "$a"; return 0; }
    case $a in
      part=* | --part=*) echo "${a#*=}"; return 0 ;;
      --part) next=1 ;;
    esac
  done
}

# sonodistill_restarts INFO: the restart count in `scontrol --oneliner show job` output INFO (0 if absent).
sonodistill_restarts() {
  local n
  n=$(sed -n 's/.* Restarts=\([0-9]*\).*/\1/p' <<<"$1")
  echo "${n:-0}"
}

# sonodistill_cancelled INFO: whether `scontrol --oneliner show job` output INFO, taken after the
# step stopped on a signal, is a job the user cancelled. `scancel` sends the SIGTERM a preemption
# sends, and SLURM would accept a requeue of the cancelled job, undoing the cancel. Cancelled: ending
# (COMPLETING; CANCELLED once ended) for no reason SLURM names (a time limit says Reason=TimeLimit)
# and not being requeued by SLURM (a preemption: its restart count has gone up).
sonodistill_cancelled() {
  local state reason
  state=$(sed -n 's/.* JobState=\([A-Z_]*\).*/\1/p' <<<"$1")
  reason=$(sed -n 's/.* Reason=\([^ ]*\).*/\1/p' <<<"$1")
  [ "$(sonodistill_restarts "$1")" -le "${SLURM_RESTART_COUNT:-0}" ] || return 1
  [ "$state" = CANCELLED ] || { [ "$state" = COMPLETING ] && [ "$reason" = None ]; }
}

sonodistill_run() {
  local label=$1
  shift
  interrupted=0
  trap 'interrupted=1; echo "sonodistill: SIGTERM received, waiting for ${label} to keep its work"' TERM
  trap 'interrupted=1; echo "sonodistill: SIGUSR1 received, waiting for ${label} to keep its work"' USR1
  # The step's status comes through a file: a `wait` cut short by a trapped signal loses the status
  # of a child that exits at that moment (bash 5.2 then reports -1). The subshell outlives the
  # signals (trapped, so the step itself gets the default handling) to write it.
  local rc
  if ! status_file=$(mktemp "${TMPDIR:-/tmp}/sonodistill-status.XXXXXX" 2>/dev/null) &&
    ! status_file=$(mktemp /tmp/sonodistill-status.XXXXXX); then
    echo "sonodistill: error: cannot create a file in \$TMPDIR (${TMPDIR:-unset}) or /tmp; ${label} not started" >&2
    exit 2
  fi
  trap 'rm -f "$status_file"' EXIT # when this script ends (global: the trap runs after the function)
  (
    set +e # a calling script's `set -e` must not end the subshell before it writes the status
    trap : TERM USR1
    "$@"
    echo $? >"$status_file"
  ) &
  local pid=$!
  # `wait` returns early on each trapped signal; 127: already collected (and the pid maybe reused)
  while kill -0 "$pid" 2>/dev/null; do
    wait "$pid" && continue
    [ $? -eq 127 ] && break
  done
  rc=$(cat "$status_file")
  rm -f "$status_file" # now: SLURM may kill this script (SIGKILL, no EXIT trap) while it requeues the job
  rc=${rc:-1}
  if [ "$rc" -eq "$EXIT_PREEMPTED" ]; then
    # An array's last task carries the array's own id: requeueing that id would requeue every task.
    local job=$SLURM_JOB_ID
    [ -n "${SLURM_ARRAY_JOB_ID:-}" ] && job="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
    if sonodistill_cancelled "$(scontrol --oneliner show job "$job" 2>/dev/null)"; then
      echo "sonodistill: job ${job} was cancelled: not requeued; ${label} kept its work: submit the same command again to go on" >&2
      exit "$rc"
    fi
    echo "sonodistill: ${label} exited with ${rc} (stopped by a signal, its work kept); requeueing job ${job}"
    # An accepted requeue ends this job with SIGTERM, which may cut scontrol short: that is success too.
    interrupted=0
    trap 'interrupted=1' TERM USR1
    local said
    said=$(scontrol requeue "$job" 2>&1) && exit 0
    [ "$interrupted" -eq 1 ] && exit 0
    # Refused because SLURM requeues it already (a preemption, `scontrol requeue` from outside: its
    # restart count has gone up while this run still completes): success.
    [ "$(sonodistill_restarts "$(scontrol --oneliner show job "$job" 2>/dev/null)")" -gt "${SLURM_RESTART_COUNT:-0}" ] && exit 0
    # Not requeued (--no-requeue, or a site that forbids it): fail, so that afterok never starts a merge.
    echo "sonodistill: error: job ${job} could not be requeued (${said:-scontrol failed}); its work is kept: submit the same command again" >&2
    exit "$rc"
  fi
  echo "sonodistill: ${label} exited with ${rc}"
  exit "$rc"
}
