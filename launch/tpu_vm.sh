#!/usr/bin/env bash
# Creates a Cloud TPU VM, installs rotnet-jax on every worker, starts the same
# `python3 main.py ...` on every worker, follows its log, stops it, deletes
# the TPU. Every step is one or more `gcloud compute tpus tpu-vm` commands;
# `--dry-run` prints them instead of running them. See launch/README.md.
set -euo pipefail

# Where `setup --ref` clones from. The project has no public URL yet: this is
# the README's placeholder; point it at your fork, e.g.
#   REPO_URL=https://github.com/me/rotnet-jax launch/tpu_vm.sh setup ...
REPO_URL="${REPO_URL:-https://github.com/rotnet-jax/rotnet-jax}"

# On every worker: the checkout, and the logs and pid files of `run`. Paths
# relative to the remote home (gcloud's ssh starts there), written with `~` so
# the remote shell expands them.
# shellcheck disable=SC2088  # the `~` is expanded on the worker, not here
REMOTE_DIR='~/rotnet-jax'
# shellcheck disable=SC2088  # as above
LOG_DIR='~/rotnet_logs'

# Accelerator types this script accepts (a typo would otherwise surface only
# as a gcloud error after the request). Extend the list when needed.
VALID_ACCELERATORS=(
  v4-8 v4-16 v4-32 v4-64
  v5litepod-1 v5litepod-4 v5litepod-8 v5litepod-16
  v5p-8 v5p-16 v5p-32
  v6e-1 v6e-4 v6e-8 v6e-16
)

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh [--dry-run] COMMAND --name=NAME --zone=ZONE [OPTIONS]

Commands:
  create --accelerator=TYPE [--version=RUNTIME] [--spot] [--data-disk=SPEC]
                          create the TPU VM (TYPE e.g. v4-8, v4-32, v5litepod-8);
                          SPEC, gcloud's --data-disk: a persistent disk to
                          attach, e.g. source=projects/P/zones/Z/disks/D,mode=read-write
  setup [--ref=GIT_REF | --copy]
                          on every worker: clone $REPO_URL at GIT_REF (default:
                          its default branch), or copy this working tree; then
                          pip install 'jax[tpu]' and the package with [tf]
  run -- ARGS...          start `python3 main.py ARGS...` on every worker,
                          detached; log: ~/rotnet_logs/NAME-<hostname>.log
  keep-running --accelerator=TYPE [--spot] [create and setup options]
               [--interval=SECONDS] -- ARGS...
                          watch the TPU every SECONDS (default 60); whenever it
                          is preempted or missing: delete, create, setup, run
                          again (the run resumes from its workdir; use a gs://
                          workdir). Ends when the run has ended on a ready TPU
  logs                    follow worker 0's log (Ctrl-C stops following only)
  stop                    stop the training process on every worker (SIGTERM:
                          it saves a checkpoint of its current step and exits;
                          waits for that)
  delete                  delete the TPU VM (gcloud asks to confirm)

Options for every command:
  --name=NAME             TPU name (lower case letters, digits, hyphens)
  --zone=ZONE             e.g. us-central2-b
  --project=PROJECT       default: gcloud's configured project
  --dry-run               print the gcloud commands (prefixed "+ "), run none
  -h, --help              this help

Options take `--opt=value` or `--opt value`. Everything after `--` goes to
main.py unchanged. Example:
  launch/tpu_vm.sh run --name=rotnet --zone=us-central2-b -- \
      --config=configs/cifar.py --workdir=/mnt/disks/data/rotnet_cifar
EOF
}

die() {  # Usage errors: one line on stderr, exit status 2.
  echo "tpu_vm.sh: error: $*" >&2
  exit 2
}

# Prints a word so that a shell reads it back unchanged: plain words as they
# are, anything else in single quotes. Used for the `--dry-run` lines.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

DRY_RUN=0

# Runs (or, with --dry-run, prints) one gcloud command.
gcloud_cmd() {
  if (( DRY_RUN )); then
    local line='+' word
    for word in gcloud "$@"; do
      line+=" $(quote "$word")"
    done
    printf '%s\n' "$line"
  else
    gcloud "$@"
  fi
}

# --- Command line -----------------------------------------------------------

COMMAND='' NAME='' ZONE='' PROJECT='' ACCELERATOR='' VERSION='' REF=''
DATA_DISK=''
SPOT=0 COPY=0
INTERVAL=60
TRAIN_ARGS=()

# `--dry-run` and `--help` count anywhere before `--` (after it, every word
# belongs to main.py).
for arg in "$@"; do
  case "$arg" in
    --) break ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help|help) usage; exit 0 ;;
  esac
done

while (( $# )); do
  arg="$1"
  shift
  case "$arg" in
    --) TRAIN_ARGS=("$@"); break ;;
    --dry-run) ;;
    --spot) SPOT=1 ;;
    --copy) COPY=1 ;;
    --name|--zone|--project|--accelerator|--version|--ref|--data-disk|--interval)
      (( $# )) || die "$arg needs a value"
      set -- "$arg=$1" "${@:2}"
      continue ;;
    --name=*) NAME="${arg#*=}" ;;
    --zone=*) ZONE="${arg#*=}" ;;
    --project=*) PROJECT="${arg#*=}" ;;
    --accelerator=*) ACCELERATOR="${arg#*=}" ;;
    --version=*) VERSION="${arg#*=}" ;;
    --ref=*) REF="${arg#*=}" ;;
    --data-disk=*) DATA_DISK="${arg#*=}" ;;
    --interval=*) INTERVAL="${arg#*=}" ;;
    -*) die "unknown option $arg (see --help)" ;;
    *)
      [[ -z "$COMMAND" ]] || die "unexpected argument '$arg' (main.py's arguments go after --)"
      COMMAND="$arg" ;;
  esac
done

COMMANDS='create, setup, run, keep-running, logs, stop, delete'
case "$COMMAND" in
  create|setup|run|keep-running|logs|stop|delete) ;;
  '') die "no command given ($COMMANDS; see --help)" ;;
  *) die "unknown command '$COMMAND' ($COMMANDS)" ;;
esac

[[ -n "$NAME" ]] || die "--name is required"
[[ -n "$ZONE" ]] || die "--zone is required (e.g. --zone=us-central2-b)"
# GCP's rule for resource names. It also keeps NAME safe to paste into the
# remote shell commands below (log and pid file names).
[[ "$NAME" =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
  die "--name='$NAME': use lower case letters, digits and hyphens, starting with a letter"

# keep-running creates, sets up and runs: it takes all their options.
CREATES=0 SETS_UP=0 RUNS=0
[[ "$COMMAND" == create || "$COMMAND" == keep-running ]] && CREATES=1
[[ "$COMMAND" == setup || "$COMMAND" == keep-running ]] && SETS_UP=1
[[ "$COMMAND" == run || "$COMMAND" == keep-running ]] && RUNS=1
if (( CREATES )); then
  [[ -n "$ACCELERATOR" ]] || die "$COMMAND needs --accelerator (one of: ${VALID_ACCELERATORS[*]})"
  known=0
  for valid in "${VALID_ACCELERATORS[@]}"; do
    [[ "$ACCELERATOR" == "$valid" ]] && known=1
  done
  (( known )) || die "unknown accelerator type '$ACCELERATOR'; valid: ${VALID_ACCELERATORS[*]}"
  if [[ -z "$VERSION" ]]; then
    # Default runtime (software) version per TPU family. These are defaults
    # that were current when this was written, not checked against a live
    # project: compare with `gcloud compute tpus versions list --zone=ZONE`
    # and pass --version when they differ.
    case "$ACCELERATOR" in
      v4-*) VERSION=tpu-ubuntu2204-base ;;
      v5litepod-*) VERSION=v2-alpha-tpuv5-lite ;;
      v5p-*) VERSION=v2-alpha-tpuv5 ;;
      v6e-*) VERSION=v2-alpha-tpuv6e ;;
    esac
  fi
fi
(( CREATES )) || [[ -z "$ACCELERATOR$VERSION$DATA_DISK" && "$SPOT" == 0 ]] ||
  die "--accelerator, --version, --spot and --data-disk belong to create (and keep-running)"
(( SETS_UP )) || [[ -z "$REF" && "$COPY" == 0 ]] ||
  die "--ref and --copy belong to setup (and keep-running)"
[[ -z "$REF" || "$COPY" == 0 ]] || die "give --ref or --copy, not both"
[[ "$COMMAND" == keep-running || "$INTERVAL" == 60 ]] ||
  die "--interval belongs to keep-running"
[[ "$INTERVAL" =~ ^[1-9][0-9]*$ ]] || die "--interval=$INTERVAL: give whole seconds, e.g. --interval=60"
if (( RUNS )); then
  (( ${#TRAIN_ARGS[@]} )) ||
    die "$COMMAND needs main.py's arguments after --, e.g. -- --config=configs/cifar.py --workdir=DIR"
elif (( ${#TRAIN_ARGS[@]} )); then
  die "only run takes arguments after --"
fi

if (( ! DRY_RUN )) && ! command -v gcloud >/dev/null 2>&1; then
  die "gcloud not found on PATH: install the Google Cloud SDK (https://cloud.google.com/sdk/docs/install) or use --dry-run"
fi

# Options every gcloud command gets.
COMMON=(--zone="$ZONE")
[[ -z "$PROJECT" ]] || COMMON+=(--project="$PROJECT")

# Runs a shell command on every worker of the TPU (one worker for a single
# host; all of a pod's workers, which a multi-host run needs).
on_all_workers() {
  gcloud_cmd compute tpus tpu-vm ssh "$NAME" "${COMMON[@]}" --worker=all --command="$1"
}

# --- Commands ---------------------------------------------------------------

# Each worker logs to its own disk; the hostname in the file name keeps the
# files apart should the home directories ever be shared.
LOG_FILE="$LOG_DIR/$NAME-\$(hostname).log"
PID_FILE="$LOG_DIR/$NAME.pid"
# jax[tpu] first (the TPU build of jaxlib and libtpu), then the package with
# the tf.data/TFDS pipeline, which downloads CIFAR-10.
INSTALL="python3 -m pip install -U 'jax[tpu]' && python3 -m pip install -e '.[tf]'"

create_tpu() {
  local flags=(--accelerator-type="$ACCELERATOR" --version="$VERSION")
  # Spot TPUs cost less and can be preempted at any time; `run` again
  # resumes from the workdir's latest checkpoint (launch/README.md).
  (( SPOT )) && flags+=(--spot)
  # A persistent disk outlives the TPU VM (its boot disk goes with it, on
  # delete or spot preemption): the place for a workdir to resume from.
  [[ -z "$DATA_DISK" ]] || flags+=(--data-disk="$DATA_DISK")
  gcloud_cmd compute tpus tpu-vm create "$NAME" "${COMMON[@]}" "${flags[@]}"
}

setup_workers() {
  # The checkout is replaced, so that setup can be re-run after a change.
  if (( COPY )); then
    # This working tree as it is, uncommitted changes included (and
    # everything else in the folder: keep big outputs elsewhere).
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    on_all_workers "rm -rf $REMOTE_DIR"
    gcloud_cmd compute tpus tpu-vm scp --recurse "$root" "$NAME:$REMOTE_DIR" \
      "${COMMON[@]}" --worker=all
    on_all_workers "cd $REMOTE_DIR && $INSTALL"
  else
    local fetch
    fetch="rm -rf $REMOTE_DIR && git clone $(printf '%q' "$REPO_URL") $REMOTE_DIR && cd $REMOTE_DIR"
    [[ -z "$REF" ]] || fetch+=" && git checkout $(printf '%q' "$REF")"
    on_all_workers "$fetch && $INSTALL"
  fi
}

start_run() {
  # printf '%q ' quotes every argument for the remote bash, so values with
  # spaces, parentheses or quotes reach main.py unchanged. nohup (immune
  # to the hangup when ssh leaves), `&` and the redirections detach the
  # process from the ssh session, which then returns; $! is python's pid
  # (nohup execs it), which `stop` signals; `>>` keeps the earlier log when
  # a run is resumed. A second start while one runs would fail on the busy
  # TPU: refuse it.
  local args
  args="$(printf '%q ' "${TRAIN_ARGS[@]}")"
  on_all_workers "mkdir -p $LOG_DIR; cd $REMOTE_DIR || exit 1; \
if [ -f $PID_FILE ] && kill -0 \"\$(cat $PID_FILE)\" 2>/dev/null; then \
echo \"\$(hostname): already running (pid \$(cat $PID_FILE)); stop it first\" >&2; exit 1; fi; \
nohup python3 main.py ${args}>> $LOG_FILE 2>&1 < /dev/null & \
echo \$! > $PID_FILE; echo \"\$(hostname): started, log $LOG_FILE\""
}

# The TPU's state as gcloud reports it (READY, CREATING, PREEMPTED, ...), or
# MISSING when there is no TPU of that name.
tpu_state() {
  gcloud compute tpus tpu-vm describe "$NAME" "${COMMON[@]}" \
    --format='value(state)' 2>/dev/null || echo MISSING
}

# Whether worker 0 still runs the process `run` started.
running_on_worker0() {
  gcloud compute tpus tpu-vm ssh "$NAME" "${COMMON[@]}" --worker=0 \
    --command="[ -f $PID_FILE ] && kill -0 \"\$(cat $PID_FILE)\" 2>/dev/null"
}

# Brings a (spot) TPU back after every preemption until the run ends: a
# preempted or missing TPU is deleted, created, set up and the run started
# again, which resumes from the workdir's latest checkpoint. Ends when the
# training process has ended on a ready TPU (finished, or failed: see
# `logs`), so a run that fails is not started again and again.
keep_running() {
  local state started=0
  while true; do
    state="$(tpu_state)"
    case "$state" in
      READY)
        if running_on_worker0; then
          started=1
        elif (( started )); then
          echo "tpu_vm.sh: the run has ended on $NAME (finished, or failed: see launch/tpu_vm.sh logs)"
          return 0
        else
          # A ready TPU that runs nothing: (re)start the run; a finished
          # workdir makes main.py stop at once, and we end next time.
          echo "tpu_vm.sh: $NAME is ready and runs nothing: starting the run"
          start_run
          started=1
        fi ;;
      MISSING|PREEMPTED|TERMINATED|STOPPED|SUSPENDED)
        echo "tpu_vm.sh: $NAME is $state: recreating it, then setup and run (the run resumes from its workdir)"
        [[ "$state" == MISSING ]] ||
          gcloud compute tpus tpu-vm delete "$NAME" "${COMMON[@]}" --quiet
        create_tpu
        setup_workers
        start_run
        started=1 ;;
      *) ;;  # CREATING, STARTING, REPAIRING...: wait.
    esac
    sleep "$INTERVAL"
  done
}

case "$COMMAND" in
  create) create_tpu ;;
  setup) setup_workers ;;
  run) start_run ;;

  keep-running)
    if (( DRY_RUN )); then
      # Which commands run depends on the TPU's state: print one recovery
      # after a preemption.
      echo "# every ${INTERVAL}s: gcloud compute tpus tpu-vm describe $NAME --format='value(state)'; after a preemption:"
      gcloud_cmd compute tpus tpu-vm delete "$NAME" "${COMMON[@]}" --quiet
      create_tpu
      setup_workers
      start_run
    else
      keep_running
    fi
    ;;

  logs)
    gcloud_cmd compute tpus tpu-vm ssh "$NAME" "${COMMON[@]}" --worker=0 \
      --command="tail -n 100 -F $LOG_FILE"
    ;;

  stop)
    # SIGTERM to the process `run` started, which then saves a checkpoint
    # of the step it is on and exits; wait for that (up to 10 minutes) so
    # that a `run` right after finds the workdir free. `|| true` so that a
    # worker with nothing running does not fail the whole command.
    on_all_workers "if [ -f $PID_FILE ]; then pid=\"\$(cat $PID_FILE)\"; kill \"\$pid\" 2>/dev/null || true; \
for _ in \$(seq 600); do kill -0 \"\$pid\" 2>/dev/null || break; sleep 1; done; \
rm -f $PID_FILE; fi; echo \"\$(hostname): stopped\""
    ;;

  delete)
    gcloud_cmd compute tpus tpu-vm delete "$NAME" "${COMMON[@]}"
    ;;
esac
