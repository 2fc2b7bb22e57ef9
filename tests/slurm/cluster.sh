#!/usr/bin/env bash
# tests/slurm/cluster.sh - a throw-away multi-node Slurm cluster on this one machine, for tests/test_slurm.py.
#
#   ROOT=/tmp/x CTLD_PORT=16817 SLURMD_PORTS="17001 17002" tests/slurm/cluster.sh up
#   export SLURM_CONF=/tmp/x/etc/slurm.conf; sbatch ...; scontrol show job ID
#   ROOT=/tmp/x tests/slurm/cluster.sh down       # exit 0 only when nothing of the cluster is left
#
# Real Debian slurm-wlm daemons, all as root and started by hand (no systemd): munged with its own key and socket
# under $ROOT (the system's /etc/munge and /run/munge are not touched), one slurmctld and one `slurmd -N nodeX`
# per node, each slurmd on its own port (Debian's build supports several slurmd on one host). The "nodes" share
# CPUs, memory, disk and network; only SLURMD_NODENAME / SLURM_NODEID differ. No slurmdbd: job state comes from
# `scontrol show job` (MinJobAge keeps finished jobs for an hour).
#
# Node names must resolve inside jobs (train.sbatch uses the first node's name as MASTER_ADDR):
#   HOSTS=bind  (default) every slurmd runs in a private mount namespace with $ROOT/etc/hosts bind-mounted over
#               /etc/hosts; job processes inherit it. The host's /etc/hosts is left alone.
#   HOSTS=etc   (chosen automatically when `unshare --mount` is refused, e.g. an unprivileged container) the names
#               are appended to /etc/hosts in place between markers; `down` removes them.
#
# Knobs: ROOT (required)  NODES=2  CPUS_PER_NODE=1  MEM_PER_NODE=1000  CTLD_PORT=16817
#        SLURMD_PORTS="17001 17002 ..." (one per node)  NODE_PREFIX=node  HOSTS=bind|etc  WAIT_S=60
# Needs: root; the packages slurmctld slurmd slurm-client munge (the test installs them with apt-get).
set -uo pipefail

ROOT=${ROOT:?set ROOT to the cluster work directory}
NODES=${NODES:-2}
CPUS_PER_NODE=${CPUS_PER_NODE:-1}
MEM_PER_NODE=${MEM_PER_NODE:-1000}
CTLD_PORT=${CTLD_PORT:-16817}
NODE_PREFIX=${NODE_PREFIX:-node}
WAIT_S=${WAIT_S:-60}
SLURM_CONF=$ROOT/etc/slurm.conf
MUNGE_SOCK=$ROOT/munge/munge.socket
export SLURM_CONF

log() { echo "[cluster.sh $(date +%T)] $*"; }
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }

up() {
  [ "$(id -u)" = 0 ] || { echo "cluster.sh: must run as root" >&2; return 1; }
  local b i n p ports
  for b in slurmctld slurmd sbatch scontrol sinfo munged munge unmunge unshare; do
    command -v "$b" >/dev/null || { echo "cluster.sh: $b not found" >&2; return 1; }
  done
  if [ -d "$ROOT/pids" ]; then
    for f in "$ROOT"/pids/*.pid; do
      [ -e "$f" ] && alive "$(cat "$f")" && { echo "cluster.sh: a cluster is running under $ROOT ($f)" >&2; return 1; }
    done
  fi
  read -r -a ports <<<"${SLURMD_PORTS:-$(seq -s ' ' 17001 $((17000 + NODES)))}"
  [ "${#ports[@]}" -ge "$NODES" ] || { echo "cluster.sh: SLURMD_PORTS needs $NODES ports" >&2; return 1; }

  rm -rf "$ROOT/etc" "$ROOT/state" "$ROOT/spool" "$ROOT/log" "$ROOT/pids" "$ROOT/munge"
  mkdir -p "$ROOT"/{etc,state,spool,log,pids,munge}
  chmod 755 "$ROOT" "$ROOT/munge"   # munged wants o+x on every directory above its socket

  if [ -z "${HOSTS:-}" ]; then
    if unshare --mount --propagation private -- true 2>/dev/null; then HOSTS=bind; else HOSTS=etc; fi
  fi
  echo "HOSTS=$HOSTS" >"$ROOT/hosts-mode"
  local names=""
  for ((i = 1; i <= NODES; i++)); do names="$names $NODE_PREFIX$i"; done
  { cat /etc/hosts; echo "127.0.0.1$names"; } >"$ROOT/etc/hosts"
  if [ "$HOSTS" = etc ]; then
    printf '# BEGIN videorope-slurm %s\n127.0.0.1%s\n# END videorope-slurm %s\n' "$ROOT" "$names" "$ROOT" >>/etc/hosts
  fi

  # munge: own key, own socket
  if command -v mungekey >/dev/null; then
    mungekey --create --keyfile="$ROOT/munge/munge.key"
  else
    dd if=/dev/urandom of="$ROOT/munge/munge.key" bs=1024 count=1 status=none
  fi
  chmod 400 "$ROOT/munge/munge.key"
  start_bg munged munged -F --force --key-file="$ROOT/munge/munge.key" --socket="$MUNGE_SOCK" \
    --pid-file="$ROOT/munge/munged.pid" --seed-file="$ROOT/munge/munged.seed" --log-file="$ROOT/log/munged.log"
  wait_for munged munged sh -c "munge -S '$MUNGE_SOCK' -n | unmunge -S '$MUNGE_SOCK'"

  {
    cat <<EOF
ClusterName=videorope-test
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=${ports[0]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job may start only once its old credential has expired (BeginTime = requeue + cred_expire
# + 1; 120 s by default); 20 s keeps the stop-and-requeue test short, and a step launched under load is well inside it
AuthInfo=socket=$MUNGE_SOCK,cred_expire=20
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool/%n
SlurmctldPidFile=$ROOT/state/slurmctld.pid
SlurmdPidFile=$ROOT/spool/slurmd-%n.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd-%n.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=3600
KillWait=5
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
EOF
    for ((i = 1; i <= NODES; i++)); do
      echo "NodeName=$NODE_PREFIX$i NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 Port=${ports[$((i - 1))]}" \
           "CPUs=$CPUS_PER_NODE RealMemory=$MEM_PER_NODE State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=$NODE_PREFIX[1-$NODES] Default=YES MaxTime=INFINITE State=UP"
  } >"$SLURM_CONF"

  start_bg slurmctld slurmctld -D -i -f "$SLURM_CONF"
  wait_for slurmctld slurmctld sh -c "scontrol ping | grep -q UP"

  local my_mntns
  my_mntns=$(readlink /proc/self/ns/mnt)
  for ((i = 1; i <= NODES; i++)); do
    n=$NODE_PREFIX$i
    mkdir -p "$ROOT/spool/$n"
    if [ "$HOSTS" = bind ]; then
      start_bg "slurmd-$n" unshare --mount --propagation private -- sh -c \
        "mount --bind '$ROOT/etc/hosts' /etc/hosts && exec slurmd -D -N $n -f '$SLURM_CONF'"
    else
      start_bg "slurmd-$n" slurmd -D -N "$n" -f "$SLURM_CONF"
    fi
  done
  sleep 0.5
  for ((i = 1; i <= NODES; i++)); do   # remember each slurmd's private mount namespace: `down` empties it
    p=$(cat "$ROOT/pids/slurmd-$NODE_PREFIX$i.pid")
    alive "$p" || { echo "cluster.sh: slurmd-$NODE_PREFIX$i died at start" >&2; return 1; }
    n=$(readlink "/proc/$p/ns/mnt")
    [ "$n" != "$my_mntns" ] && echo "$n" >"$ROOT/pids/slurmd-$NODE_PREFIX$i.mntns"
  done
  wait_for "$NODES idle nodes" - sh -c "[ \$(sinfo -h -N -t idle -o %N | sort -u | wc -l) -eq $NODES ]"
  log "cluster up under $ROOT: $NODES nodes, ctld port $CTLD_PORT, slurmd ports ${ports[*]:0:$NODES}, HOSTS=$HOSTS"
  sinfo -N
}

# start_bg NAME CMD... : CMD in the background, detached from our stdio, its PID in pids/NAME.pid
start_bg() {
  local name=$1; shift
  ( exec setsid "$@" </dev/null >"$ROOT/log/$name.out" 2>&1 ) &
  echo $! >"$ROOT/pids/$name.pid"
}

wait_for() {  # DESC PIDNAME CMD... (PIDNAME "-": no daemon to watch)
  local desc=$1 pidname=$2 i; shift 2
  for ((i = 0; i < WAIT_S * 10; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    if [ "$pidname" != - ] && ! alive "$(cat "$ROOT/pids/$pidname.pid")"; then
      echo "cluster.sh: $pidname exited while waiting for $desc" >&2; return 1
    fi
    sleep 0.1
  done
  echo "cluster.sh: timed out after ${WAIT_S}s waiting for $desc" >&2
  return 1
}

stop() {  # NAME EXPECT : SIGTERM the recorded PID (if its command line mentions EXPECT), SIGKILL after 10 s
  local f="$ROOT/pids/$1.pid" p i
  [ -f "$f" ] || return 0
  p=$(cat "$f")
  if alive "$p" && tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q -- "$2"; then
    kill -TERM "$p" 2>/dev/null
    for ((i = 0; i < 100; i++)); do alive "$p" || break; sleep 0.1; done
    alive "$p" && { log "$1 ($p) ignored SIGTERM, SIGKILL"; kill -KILL "$p" 2>/dev/null; sleep 0.2; }
  fi
  rm -f "$f"
}

in_mntns() {  # NS... : PIDs (not ours) whose mount namespace is one of NS
  local d p m ns
  for d in /proc/[0-9]*; do
    p=${d#/proc/}; [ "$p" = $$ ] && continue
    m=$(readlink "$d/ns/mnt" 2>/dev/null) || continue
    for ns in "$@"; do [ "$m" = "$ns" ] && echo "$p"; done
  done
}

ours() {  # PIDs of slurm/munge processes whose command line or environment names $ROOT
  local d p
  for d in /proc/[0-9]*; do
    p=${d#/proc/}; [ "$p" = $$ ] && continue
    case "$(cat "$d/comm" 2>/dev/null)" in
      slurmctld* | slurmd* | slurmstepd* | munged) ;;
      *) continue ;;
    esac
    { tr '\0' '\n' <"$d/cmdline"; tr '\0' '\n' <"$d/environ"; } 2>/dev/null | grep -qF "$ROOT/" && echo "$p"
  done
}

down() {
  [ "$(id -u)" = 0 ] || { echo "cluster.sh: must run as root" >&2; return 1; }
  [ -d "$ROOT/pids" ] || { log "nothing under $ROOT"; return 0; }
  local f p i jobs mntns victims left=0 HOSTS=bind
  [ -f "$ROOT/hosts-mode" ] && . "$ROOT/hosts-mode"

  # 1. cancel every job while the controller is still there
  if [ -f "$ROOT/pids/slurmctld.pid" ] && alive "$(cat "$ROOT/pids/slurmctld.pid")"; then
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
      log "scancel $jobs"
      timeout 10 scancel $jobs 2>/dev/null
      for ((i = 0; i < 150; i++)); do [ -z "$(timeout 5 squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.1; done
    fi
  fi
  # 2. the slurmds, then whatever is left in their mount namespaces (slurmstepd, job tasks)
  for f in "$ROOT"/pids/slurmd-*.pid; do [ -e "$f" ] && stop "$(basename "$f" .pid)" slurmd; done
  mntns=$(cat "$ROOT"/pids/*.mntns 2>/dev/null | sort -u | grep -vxF "$(readlink /proc/self/ns/mnt)")
  if [ -n "$mntns" ]; then
    victims=$(in_mntns $mntns)
    [ -n "$victims" ] && { log "SIGTERM to leftover job processes:" $victims; kill -TERM $victims 2>/dev/null; sleep 1; }
    victims=$(in_mntns $mntns)
    [ -n "$victims" ] && { log "SIGKILL to leftover job processes:" $victims; kill -KILL $victims 2>/dev/null; sleep 0.2; }
  fi
  # HOSTS=etc (no private namespace): slurmstepds of this cluster and all their descendants
  victims=$(ours)
  if [ -n "$victims" ]; then
    victims=$(awk '/^Pid:/{p=$2} /^PPid:/{print p, $2; nextfile}' /proc/[0-9]*/status 2>/dev/null |
      awk -v roots="$victims" 'BEGIN{n=split(roots,r," "); for(i=1;i<=n;i++) v[r[i]]=1}
        {pp[$1]=$2} END{do{c=0; for(p in pp) if(!(p in v) && (pp[p] in v)){v[p]=1;c=1}}while(c); for(p in v) print p}' |
      grep -vxF -e "$$" -e "$(cat "$ROOT/pids/slurmctld.pid" 2>/dev/null)" -e "$(cat "$ROOT/pids/munged.pid" 2>/dev/null)")
    [ -n "$victims" ] && { log "SIGKILL to leftover slurmstepd trees:" $victims; kill -KILL $victims 2>/dev/null; sleep 0.2; }
  fi
  # 3. controller, munge
  stop slurmctld slurmctld
  stop munged munged
  # 4. /etc/hosts entries (HOSTS=etc), removed in place
  if [ "$HOSTS" = etc ] && grep -qxF "# BEGIN videorope-slurm $ROOT" /etc/hosts; then
    awk -v b="# BEGIN videorope-slurm $ROOT" -v e="# END videorope-slurm $ROOT" \
      '$0==b{skip=1;next} $0==e{skip=0;next} !skip' /etc/hosts >"$ROOT/hosts.tmp" &&
      cat "$ROOT/hosts.tmp" >/etc/hosts && rm -f "$ROOT/hosts.tmp"
  fi
  # 5. check
  for f in "$ROOT"/pids/*.pid; do [ -e "$f" ] && { echo "still recorded: $f"; left=1; }; done
  if [ -n "$mntns" ]; then
    for p in $(in_mntns $mntns); do echo "still running in a slurmd namespace: $p"; left=1; done
  fi
  for p in $(ours); do echo "still running: $p $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)"; left=1; done
  grep -qxF "# BEGIN videorope-slurm $ROOT" /etc/hosts && { echo "/etc/hosts still has our entries"; left=1; }
  rm -f "$ROOT"/pids/*.mntns
  [ $left = 0 ] && log "down: no daemon or job process left" || log "down: NOT clean"
  return $left
}

case "${1:-}" in
  up)
    ( set -e; up )   # a plain command, so that set -e applies inside up()
    rc=$?
    if [ "$rc" != 0 ]; then
      echo "cluster.sh: up failed, logs:" >&2
      for f in "$ROOT"/log/*; do [ -s "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
      down >&2
    fi
    exit "$rc" ;;
  down) down ;;
  *) echo "usage: ROOT=DIR $0 up|down" >&2; exit 2 ;;
esac
