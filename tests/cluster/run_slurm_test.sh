#!/usr/bin/env bash
# A real SLURM run of the embedded demo, compared with a local run of the same config.
#
# Starts a one-node SLURM cluster on this machine from the distribution's packages (munged, mariadb,
# slurmdbd, slurmctld, slurmd, with their state, logs, sockets and ports in a private folder; only
# symbolic links to its configuration go into /etc/slurm, removed at the end). Runs the demo with
#   snakemake --profile profiles/slurm --profile tests/cluster/profile --workflow-profile none
# in one temporary copy of the project and with `snakemake --cores 2` (same threads per job) in another,
# checks the outputs, that both runs wrote the same features and eval/metrics.parquet rows and values,
# and stops every daemon it started. Exit status: 0 pass, 2 rows match but values differ, 1 otherwise.
#
# usage (as root; Debian/Ubuntu; snakemake and snakemake-executor-plugin-slurm on PATH):
#   PATH=/path/to/.venv/bin:$PATH tests/cluster/run_slurm_test.sh
# environment: WORK (folder for the cluster and both runs, default a new /tmp/pathomix-slurm.*),
#   PORT (first of four TCP ports: slurmctld, slurmd, slurmdbd, mariadb; default 16817),
#   EPOCHS (train.epochs of both runs, default 10), NO_INSTALL=1 (do not apt-get install),
#   CGROUP=0 (track and confine jobs without cgroups, for containers that have none),
#   EXTRA_CONFIG (one more --config item for both runs, e.g. 'slide_batches={size: 10, above: 0}' to
#   tile and extract the demo in batch jobs), SHORT_LIMIT=1 (the SLURM run's training jobs get 1 minute on their
#   first attempt and 5 on the retry: the longer ones are killed by SLURM for time, resubmitted with more time by
#   the profile's `retries`, and the results must still equal the local run's).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${WORK:-$(mktemp -d /tmp/pathomix-slurm.XXXXXX)}
PORT=${PORT:-16817}
EPOCHS=${EPOCHS:-10}
CGROUP=${CGROUP:-1}
HOST=$(hostname -s)
CPUS=2
# what both runs override in config.yaml (the demo, fewer epochs so that the test takes minutes)
CONFIG=(results_dir=results "train={epochs: $EPOCHS}")
if [[ -n ${EXTRA_CONFIG:-} ]]; then CONFIG+=("$EXTRA_CONFIG"); fi

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root: the script installs packages and starts the SLURM daemons"
command -v snakemake >/dev/null || die "snakemake is not on PATH (activate the project's venv)"
python -c "import snakemake_executor_plugin_slurm" 2>/dev/null \
    || die "snakemake-executor-plugin-slurm is not installed: pip install -e '.[slurm]'"

# ---- 1. packages ---------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
    [[ ${NO_INSTALL:-0} == 1 ]] && die "slurm-wlm, slurmdbd, mariadb-server or munge missing and NO_INSTALL=1"
    log "installing slurm-wlm slurmdbd mariadb-server munge"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm slurmdbd mariadb-server munge >/dev/null
fi

# ---- 2. configuration, in $WORK/etc --------------------------------------------------------------
ETC=$WORK/etc RUN=$WORK/run LOG=$WORK/log STATE=$WORK/state
mkdir -p "$ETC" "$RUN" "$LOG" "$STATE/ctld" "$STATE/d" "$WORK/munge" "$WORK/db" "$WORK/gpu"
chmod 700 "$WORK/munge"
# The configuration must be at SLURM's default path, /etc/slurm: snakemake-executor-plugin-slurm-jobstep
# removes SLURM_CONF (like every SLURM_* variable) from the environment of the srun it starts in a job.
SYS_ETC=/etc/slurm CONF_FILES=(slurm.conf gres.conf cgroup.conf slurmdbd.conf)
for f in "${CONF_FILES[@]}"; do
    if [[ -e $SYS_ETC/$f || -L $SYS_ETC/$f ]]; then
        die "$SYS_ETC/$f exists: this machine has a SLURM configuration (or a killed run left its link);" \
            "run the test on a machine without one, or remove the link"
    fi
done
unset SLURM_CONF
CTLD_PORT=$PORT SLURMD_PORT=$((PORT + 1)) DBD_PORT=$((PORT + 2)) DB_PORT=$((PORT + 3))
for p in "$CTLD_PORT" "$SLURMD_PORT" "$DBD_PORT" "$DB_PORT"; do
    ! ss -ltn | awk '{print $4}' | grep -q ":$p\$" || die "port $p is in use; set PORT to a free range"
done
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)  # slurmd drains a node that has less
MUNGE_SOCKET=$WORK/munge/munge.socket
DB_PASS=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')

cat > "$ETC/slurm.conf" <<EOF
ClusterName=pathomix-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
$(if [[ $CGROUP == 1 ]]; then
    echo "ProctrackType=proctrack/cgroup"; echo "TaskPlugin=task/cgroup,task/affinity"
    echo "JobAcctGatherType=jobacct_gather/cgroup"
else
    echo "ProctrackType=proctrack/linuxproc"; echo "TaskPlugin=task/none"; echo "JobAcctGatherType=jobacct_gather/linux"
fi)
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCKET
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
GresTypes=gpu
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge=300
# one node, two partitions (as on a site with CPU and GPU partitions); the two GPUs are stand-ins
# (gres.conf points at copies of /dev/null): jobs that ask for --gpus get one and run on the CPU
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$HOST MaxTime=INFINITE State=UP
EOF
# slurmd drops a GPU without a device file, and wants a character device: two copies of /dev/null
for i in 0 1; do [[ -e $WORK/gpu/nvidia$i ]] || mknod "$WORK/gpu/nvidia$i" c 1 3; done
echo "NodeName=$HOST Name=gpu File=$WORK/gpu/nvidia[0-1]" > "$ETC/gres.conf"
# cgroup v1 or v2, whichever the kernel offers; cores and memory of each job are confined to its request
printf 'CgroupPlugin=autodetect\nConstrainCores=yes\nConstrainRAMSpace=yes\n' > "$ETC/cgroup.conf"
cat > "$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
chmod 600 "$ETC/slurmdbd.conf"
mkdir -p "$SYS_ETC"
for f in "${CONF_FILES[@]}"; do ln -s "$ETC/$f" "$SYS_ETC/$f"; done

# ---- 3. daemons (stopped on exit, whatever happens) ----------------------------------------------
stop_pidfile() {  # stop the daemon whose pid file this is, and wait until it is gone
    local f=$1 pid
    [[ -s $f ]] || return 0
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    log "stopping the cluster"
    scancel --full --quiet --user root 2>/dev/null || true
    for d in slurmd slurmctld slurmdbd; do stop_pidfile "$RUN/$d.pid"; done
    stop_pidfile "$WORK/db/mariadb.pid"
    stop_pidfile "$WORK/munge/munged.pid"
    for f in "${CONF_FILES[@]}"; do
        if [[ $(readlink "$SYS_ETC/$f" 2>/dev/null) == "$ETC/$f" ]]; then rm "$SYS_ETC/$f"; fi
    done
    # the (empty) cgroup folders that slurmd made for this node
    for d in /sys/fs/cgroup/*/"slurm_$HOST" /sys/fs/cgroup/"slurm_$HOST"; do
        if [[ -d $d && ! -e $WORK/.cgroup-existed ]]; then find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
    done
    log "logs and both runs are in $WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() {  # wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds
    local end=$((SECONDS + $1)) what=$2; shift 2
    until timeout 10 "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || die "$what did not come up in time (logs in $LOG, $WORK/db, $WORK/munge)"
        sleep 0.5
    done
}

compgen -G "/sys/fs/cgroup/*/slurm_$HOST" >/dev/null && touch "$WORK/.cgroup-existed"
log "munged"
head -c 1024 /dev/urandom > "$WORK/munge/munge.key"
chmod 400 "$WORK/munge/munge.key"
munged --force --num-threads=10 --key-file="$WORK/munge/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$WORK/munge/munged.pid" --log-file="$WORK/munge/munged.log" --seed-file="$WORK/munge/munged.seed"
wait_for 10 munged sh -c "munge -S '$MUNGE_SOCKET' -n | unmunge -S '$MUNGE_SOCKET'"

log "mariadb (accounting database for slurmdbd)"
mariadb-install-db --no-defaults --user=root --datadir="$WORK/db/data" --auth-root-authentication-method=socket \
    --skip-test-db > "$WORK/db/install.log" 2>&1
mariadbd --no-defaults --user=root --datadir="$WORK/db/data" --socket="$WORK/db/mysqld.sock" \
    --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$WORK/db/mariadb.pid" \
    --log-error="$WORK/db/mariadb.err" --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 &
wait_for 60 mariadb mariadb --no-defaults -S "$WORK/db/mysqld.sock" -u root -e "select 1"
mariadb --no-defaults -S "$WORK/db/mysqld.sock" -u root -e "
    CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

log "slurmdbd, slurmctld, slurmd"
slurmdbd
wait_for 60 slurmdbd sacctmgr -n list cluster
slurmctld
wait_for 60 slurmctld scontrol ping
slurmd -N "$HOST"
wait_for 60 "the node" sh -c "sinfo -h -N -o %T | grep -Eq '^(idle|mixed|allocated)'"
# the account that the profile's slurm_account names, with root as its user (the plugin checks it with sacctmgr)
sacctmgr -i add account pathomix Description=pathomix-test Organization=pathomix >/dev/null
sacctmgr -i add user root Account=pathomix DefaultAccount=pathomix >/dev/null
SLURM_VERSION=$(sinfo --version)
log "$SLURM_VERSION up: $(sinfo -h -o '%P %D %c %m %G %T' | tr '\n' ';')"

# ---- 4. the demo: through SLURM, and locally -----------------------------------------------------
copy_project() {
    mkdir -p "$1"
    for item in Snakefile config.yaml workflow profiles src tests/cluster/profile; do
        mkdir -p "$1/$(dirname "$item")"
        cp -r "$ROOT/$item" "$1/$item"
    done
}
run_snakemake() {  # run_snakemake DIR LOGFILE ARGS...: time in seconds on stdout
    local dir=$1 out=$2 t0; shift 2
    t0=$(date +%s)
    (cd "$dir" && PYTHONPATH="$dir/src" snakemake "$@" --config "${CONFIG[@]}" > "$out" 2>&1) \
        || { tail -60 "$out" >&2; die "snakemake $* in $dir (log: $out)"; }
    echo $(($(date +%s) - t0))
}

copy_project "$WORK/slurm"
copy_project "$WORK/local"
PROFILES=(--profile profiles/slurm --profile tests/cluster/profile)
if [[ -n ${SHORT_LIMIT:-} ]]; then  # a copy of the site profile whose training jobs have a deliberately short limit
    mkdir -p "$WORK/slurm/tests/cluster/profile-short"
    python - "$WORK/slurm/tests/cluster/profile/config.yaml" "$WORK/slurm/tests/cluster/profile-short/config.yaml" <<'PY'
import sys

import yaml

cfg = yaml.safe_load(open(sys.argv[1]))
for rule in ("train", "train_joint_umeml"):
    cfg["set-resources"][rule]["runtime"] = "4 * attempt - 3"  # minutes: 1 on the first attempt, 5 on the retry
yaml.safe_dump(cfg, open(sys.argv[2], "w"))
PY
    PROFILES=(--profile profiles/slurm --profile tests/cluster/profile-short)
fi
log "without --workflow-profile none the workflow must stop before submitting anything"
if (cd "$WORK/slurm" && PYTHONPATH="$WORK/slurm/src" snakemake "${PROFILES[@]}" > "$LOG/snakemake-guard.log" 2>&1); then
    die "snakemake ${PROFILES[*]} ran with profiles/default's run-wide gpu limit (log: $LOG/snakemake-guard.log)"
fi
grep -q "run-wide .gpu. limit" "$LOG/snakemake-guard.log" || die "no run-wide gpu message in $LOG/snakemake-guard.log"
[[ -z $(squeue -h) && -z $(sacct -X -n --starttime today) ]] || die "jobs were submitted despite the guard"
log "demo through SLURM: snakemake ${PROFILES[*]} --workflow-profile none"
SLURM_S=$(run_snakemake "$WORK/slurm" "$LOG/snakemake-slurm.log" "${PROFILES[@]}" --workflow-profile none)
log "SLURM run: ${SLURM_S}s"
sacct -X --parsable2 --starttime today \
    --format=JobID,Partition,AllocCPUS,ReqMem,AllocTRES,Elapsed,State,Comment > "$LOG/sacct.txt"
# the same threads per job as tests/cluster/profile, so that both runs can compute the same numbers
LOCAL=(--cores "$CPUS" --set-threads extract=2 train=1)
log "demo locally: snakemake ${LOCAL[*]}"
LOCAL_S=$(run_snakemake "$WORK/local" "$LOG/snakemake-local.log" "${LOCAL[@]}")
log "local run: ${LOCAL_S}s"

# ---- 5. checks -----------------------------------------------------------------------------------
CHECK=$ROOT/../shared/tools/check_results.py
if [[ -f $CHECK ]]; then
    python "$CHECK" "$WORK/slurm/results" || die "check_results.py on the SLURM run's results"
fi
STATUS=0
python - "$WORK/slurm" "$WORK/local" "$LOG/sacct.txt" "${SHORT_LIMIT:-}" <<'EOF' || STATUS=$?
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import yaml

slurm, local, sacct = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
res = slurm / "results"
for rel in ("eval/metrics.parquet", "eval/summary.csv", "eval/comparison.html", "eval/provenance.html",
            "splits/folds.parquet", "genes/fold0/hvg.parquet"):
    assert (res / rel).is_file(), f"SLURM run: {rel} missing"
cfg = yaml.safe_load((slurm / "config.yaml").read_text())
slides = pd.read_csv(slurm / cfg["demo"]["dir"] / "slides.tsv", sep="\t")
enc, mags = cfg["features"]["encoder"], list(cfg["tiling"]["magnifications"])
missing = [f"{m}/{s}" for s in slides.slide_id for m in mags
           if not (res / "features" / enc / m / f"{s}.h5").is_file() or not (res / "tiles" / m / f"{s}.h5").is_file()]
assert not missing, f"SLURM run: tiles/features missing for {missing}"

stores = sorted((res / "features").glob("*/*/*.h5"))
same_stores = 0
for f in stores:
    with h5py.File(f, "r") as x, h5py.File(local / "results" / f.relative_to(res), "r") as y:
        same_stores += np.array_equal(x["features"][:], y["features"][:])
print(f"feature stores bitwise identical in both runs: {same_stores}/{len(stores)}")

key = ["model", "task", "fold", "metric"]
a = pd.read_parquet(res / "eval/metrics.parquet").sort_values(key).reset_index(drop=True)
b = pd.read_parquet(local / "results/eval/metrics.parquet").sort_values(key).reset_index(drop=True)
rows_a, rows_b = set(map(tuple, a[key].astype(str).values)), set(map(tuple, b[key].astype(str).values))
assert rows_a == rows_b, f"rows differ: only SLURM {sorted(rows_a - rows_b)[:5]}, only local {sorted(rows_b - rows_a)[:5]}"
n_models, n_tasks, n_folds = a.model.nunique(), a.task.nunique(), a.fold.nunique()
print(f"metrics: {len(a)} rows, {n_models} models x {n_tasks} tasks x {n_folds} folds (incl. 'all'), same in both runs")
values = [c for c in ("value", "ci_low", "ci_high") if c in a.columns]
diff = max(float(np.nanmax(np.abs(a[c].to_numpy(float) - b[c].to_numpy(float)), initial=0)) for c in values)
same = all(np.array_equal(a[c].to_numpy(float), b[c].to_numpy(float), equal_nan=True) for c in values)
print(f"metric values: {'identical' if same else f'differ, max |difference| {diff:.3g}'} ({', '.join(values)})")

jobs = pd.read_csv(sacct, sep="|")
states = {k: int(v) for k, v in jobs.State.value_counts().items()}
if len(sys.argv) > 4 and sys.argv[4]:  # SHORT_LIMIT: some training jobs ran out of time and were resubmitted
    timeouts = jobs[jobs.State.str.startswith("TIMEOUT")].Comment.fillna("").tolist()
    assert timeouts, f"SHORT_LIMIT: no job was killed for time; states {states}"
    print(f"killed by SLURM at their 1-minute limit and resubmitted with 5 minutes: {len(timeouts)} job(s), e.g. "
          f"{[t[:60] for t in timeouts[:3]]}")
print(f"SLURM jobs: {len(jobs)}, {int((jobs.Partition == 'gpu').sum())} on partition gpu; {states}; by comment:")
print(jobs.Comment.fillna("").str.replace(r"_wildcards_.*", "_wildcards_...", regex=True).value_counts().to_string())
sys.exit(0 if same else 2)
EOF
log "summary: $SLURM_VERSION; SLURM run ${SLURM_S}s, local run ${LOCAL_S}s; sacct in $LOG/sacct.txt"
exit $STATUS
