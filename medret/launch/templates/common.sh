# ---------------------------------------------------------------- helpers (shared by every layout)
medret_log() { echo "[medret-job $(date +%H:%M:%S)${MEDRET_NODE:+ $MEDRET_NODE}] $*"; }
medret_fail() {
    echo "[medret-job $(date +%H:%M:%S)${MEDRET_NODE:+ $MEDRET_NODE}] FAILED: $*" >&2
    exit 1
}

# Children (servers, raylets, srun steps, the trainer) are killed on exit, failure, scancel or Ctrl-C.
MEDRET_CHILDREN=()
medret_cleanup() {
    local rc=$? pid alive tries=0
    trap - EXIT TERM INT
    if [ "${#MEDRET_CHILDREN[@]}" -gt 0 ]; then
        for pid in "${MEDRET_CHILDREN[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
        while [ "$tries" -lt 50 ]; do
            alive=0
            for pid in "${MEDRET_CHILDREN[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            [ "$alive" = 0 ] && break
            sleep 0.5
            tries=$((tries + 1))
        done
        for pid in "${MEDRET_CHILDREN[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    fi
    if [ "$rc" = 0 ]; then
        # the batch shell removes Ray's session files after a clean run (kept after a failure, for its logs)
        [ "${MEDRET_IS_BATCH:-0}" = 1 ] && [ -n "${RAY_TMP:-}" ] && [ -d "$RAY_TMP" ] && rm -rf "$RAY_TMP"
    else
        medret_log "exiting with status $rc"
    fi
    exit "$rc"
}
medret_on_signal() {
    medret_log "received SIG$1: stopping"
    exit 143
}
medret_traps() {
    trap medret_cleanup EXIT
    trap 'medret_on_signal TERM' TERM
    trap 'medret_on_signal INT' INT
}

# GPU indices "0,1,2" -> the ids CUDA uses on this node: SLURM's CUDA_VISIBLE_DEVICES for the job, else 0..N-1.
medret_gpu_ids() {
    local idx="$1" alloc="${CUDA_VISIBLE_DEVICES:-}" out="" i
    local -a ids
    [ -n "$idx" ] || { echo ""; return 0; }
    case "$alloc" in "" | NoDevFiles | none) alloc="$(seq -s, 0 $((GPUS_PER_NODE - 1)))" ;; esac
    IFS=, read -r -a ids <<<"$alloc"
    for i in ${idx//,/ }; do
        if [ "$i" -ge "${#ids[@]}" ]; then
            echo "GPU index $i is not among this node's GPUs (CUDA_VISIBLE_DEVICES=$alloc)" >&2
            return 1
        fi
        out="$out${out:+,}${ids[$i]}"
    done
    echo "$out"
}

medret_count() { # "0,1,2" -> 3
    local s="$1"
    [ -n "$s" ] || { echo 0; return; }
    local -a a
    IFS=, read -r -a a <<<"$s"
    echo "${#a[@]}"
}

medret_node_ip() {
    local ip
    ip="$(hostname -I 2>/dev/null | awk '{print $1}')"
    echo "${ip:-127.0.0.1}"
}

medret_setup() {
    DRY_RUN=0
    local a
    for a in "$@"; do
        case "$a" in
            --dry-run) DRY_RUN=1 ;;
            -h | --help) sed -n '2,/^set -eo/p' "$0"; exit 0 ;;
            *) medret_fail "unknown argument '$a': the only option is --dry-run" ;;
        esac
    done
    medret_traps
    MEDRET_IS_BATCH=1
    JOB_ID="${SLURM_JOB_ID:-$$}"
    if [ -n "${SLURM_JOB_NODELIST:-}" ] && command -v scontrol >/dev/null 2>&1; then
        mapfile -t NODE_NAMES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    else
        NODE_NAMES=("$(hostname -s 2>/dev/null || hostname)")
    fi
    IN_SLURM=0
    [ -n "${SLURM_JOB_ID:-}" ] && IN_SLURM=1
    if [ "$DRY_RUN" = 0 ] && [ "${#NODE_NAMES[@]}" -lt "$NODES_PLANNED" ]; then
        medret_fail "this job needs $NODES_PLANNED nodes but has ${#NODE_NAMES[@]} (${NODE_NAMES[*]}); submit it with sbatch (or use --dry-run)"
    fi
    read -r -a MEDRET <<<"${MEDRET_CMD:-medret}"
    read -r -a RAY <<<"${MEDRET_RAY:-ray}"
    RUN_DIR="${MEDRET_RUN_DIR:-${SLURM_SUBMIT_DIR:-$PWD}/medret-run-$JOB_ID}"
    # Job-unique ports, so several jobs can share a node: 100 ports per job from 20000.
    PORT_BASE=$((20000 + (JOB_ID % 400) * 100))
    RAY_PORT=$PORT_BASE
    HEAD_IP="${MEDRET_HEAD_IP:-$(medret_node_ip)}"
    RAY_ADDRESS_JOB="$HEAD_IP:$RAY_PORT"
    RAY_TMP="${MEDRET_RAY_TMP:-/tmp/medret-ray-$JOB_ID}"
    MEDRET_RAY_JOB="$JOB_ID"
    export MEDRET_RAY_JOB MEDRET_DB_DIR MODEL DATA_DIR RUN_DIR PORT_BASE RAY_PORT HEAD_IP RAY_TMP HEALTH_TIMEOUT
    export LAYOUT GPUS_PER_NODE TRAIN_GPU_INDICES RETRIEVER_GPU_INDICES RETRIEVER_DEVICE CORPUS RETRIEVER SHARDS
    export PATHS_ON_COMPUTE_NODES
    export RAY_RESOURCE
    TRAIN_PATH="$(medret_data_path "$TRAIN_FILE")"
    VAL_PATH="$(medret_data_path "$VAL_FILE")"
    export TRAIN_PATH VAL_PATH
    # Ray >= 2.5x: `ray start` uses token auth when ~/.ray/auth_token exists, but drivers given an address do
    # not; one explicit mode for the whole job (raylets, medret, the trainer) avoids "Missing authorization".
    if [ -z "${RAY_AUTH_MODE:-}" ]; then
        if [ -s "$HOME/.ray/auth_token" ]; then RAY_AUTH_MODE=token; else RAY_AUTH_MODE=disabled; fi
    fi
    export RAY_AUTH_MODE
    export MEDRET_CMD="${MEDRET_CMD:-medret}" MEDRET_RAY="${MEDRET_RAY:-ray}"
    [ "$DRY_RUN" = 1 ] || mkdir -p "$RUN_DIR"
    medret_log "job $JOB_ID layout=$LAYOUT mode=$MEDRET_MODE nodes=${NODE_NAMES[*]} run dir $RUN_DIR"
    medret_check_paths
}

medret_data_path() { # a data file: relative to DATA_DIR unless absolute
    case "$1" in
        /*) echo "$1" ;;
        *) echo "${DATA_DIR%/}/$1" ;;
    esac
}

# The paths the job reads, checked before Ray or the retriever starts (and by the dry run, unless the script says
# they exist only on the compute nodes: PATHS_ON_COMPUTE_NODES=1): training (train mode) reads DATA_DIR's two files
# and MODEL when it is a folder (not a hub id such as Qwen/Qwen2.5-7B); the retriever reads MEDRET_DB_DIR.
# `medret slurm check` applies the same rule (medret.launch.paths).
medret_is_path() { # a model given as a folder: /x, ./x, ../x, ~/x, a/b/c, or anything that exists here
    case "$1" in /* | ./* | ../* | "~"* | */*/*) return 0 ;; esac
    [ -e "$1" ]
}

medret_check_paths() {
    local f key dir missing="" model="${MODEL/#\~/$HOME}" where
    where="$(hostname -s 2>/dev/null || hostname)"
    if [ "$DRY_RUN" = 1 ] && [ "${PATHS_ON_COMPUTE_NODES:-0}" = 1 ]; then
        medret_log "paths not checked in a dry run (rendered with --paths-on-compute-nodes): the job checks them on its first node"
        return 0
    fi
    if [ -n "${MEDRET_DB_DIR:-}" ] && [ ! -d "$MEDRET_DB_DIR" ]; then
        medret_fail "the corpus folder MEDRET_DB_DIR=$MEDRET_DB_DIR does not exist on $where: give --db-dir (or MEDRET_DB_DIR at submit time) a folder that exists on the job's nodes"
    fi
    [ "$MEDRET_MODE" = train ] || return 0
    if [ ! -d "$DATA_DIR" ]; then
        medret_fail "the data folder DATA_DIR=$DATA_DIR does not exist on $where (relative to $PWD): render with --data-dir DIR (or set DATA_DIR at submit time) naming the folder that holds $TRAIN_FILE and $VAL_FILE"
    fi
    for key in train val; do
        if [ "$key" = train ]; then f="$TRAIN_PATH"; else f="$VAL_PATH"; fi
        [ -f "$f" ] && [ -r "$f" ] || missing="$missing data.${key}_files=$f"
    done
    if [ -n "$missing" ]; then
        medret_fail "missing training data:$missing (DATA_DIR=$DATA_DIR holds: $(cd "$DATA_DIR" 2>/dev/null && ls -1 -- *.parquet 2>/dev/null | tr '\n' ' ' || true)). Write them with \`medret kare prepare --out DIR\` (train.parquet, val.parquet), or render with --data-dir DIR --train-file NAME --val-file NAME (Search-R1's data scripts write train.parquet and test.parquet: --val-file test.parquet)"
    fi
    if medret_is_path "$MODEL" && [ ! -e "$model" ]; then
        medret_fail "the model MODEL=$MODEL does not exist on $where: render with --model naming a folder that exists on the job's nodes (or set MODEL at submit time), or give a hub id such as Qwen/Qwen2.5-7B"
    fi
}

# NAME... : HQ_NAME is $NAME quoted so that hydra's override parser reads back exactly its text ('...', a quote as
# \', ${ as \${, backslashes doubled before a quote or at the end), as medret.launch.retriever.hydra_literal quotes
# the values known when rendering. RETRIEVER_ENDPOINT is the /retrieve address of RETRIEVER_URL.
medret_hydra_quote() {
    local name v out c i run
    RETRIEVER_ENDPOINT="${RETRIEVER_URL:+$RETRIEVER_URL/retrieve}"
    for name in "$@"; do
        v="${!name-}" out="" run=""
        for ((i = 0; i < ${#v}; i++)); do
            c="${v:i:1}"
            if [ "$c" = '\' ]; then run="$run\\"; continue; fi
            if [ "$c" = "'" ]; then
                out="$out$run$run\\'"
            elif [ "$c" = '$' ] && [ "${v:i+1:1}" = '{' ]; then
                out="$out$run\\\$"
            else
                out="$out$run$c"
            fi
            run=""
        done
        printf -v "HQ_$name" "'%s'" "$out$run$run"
    done
}

# The functions every node task needs, as text for `bash -c` (srun steps start a fresh shell).
medret_functions() {
    declare -f $(compgen -A function | grep '^medret_')
}

# Run a node task (a medret_* function) on node $1 (srun step) -- or here when not under SLURM.
# Replaces the calling shell: call it through medret_start_bg.
medret_on_node() {
    local node="$1" fn="$2"
    if [ "$IN_SLURM" = 1 ]; then
        exec srun --overlap --nodes=1 --ntasks=1 -w "$node" --kill-on-bad-exit=1 \
            bash -c "$(medret_functions); $(medret_task_preamble "$node"); $fn"
    else
        exec bash -c "$(medret_functions); $(medret_task_preamble "$node"); $fn"
    fi
}

medret_task_preamble() {
    echo "set -o pipefail; MEDRET_NODE=$1; IN_SLURM=$IN_SLURM; DRY_RUN=0; MEDRET_CHILDREN=(); medret_traps"
    echo 'read -r -a MEDRET <<<"${MEDRET_CMD:-medret}"'
}

# A raylet on this node: medret_ray_node ROLE(head|worker) INDEX CUDA_VISIBLE_DEVICES NUM_GPUS RESOURCES_JSON
# Ports are job-unique (PORT_BASE) and per raylet index, so two jobs or two raylets on one host never collide.
medret_ray_node() {
    local role="$1" idx="$2" cvd="$3" ngpu="$4" res="$5" i
    i=$((idx % 20))
    local -a RAY_BIN args
    read -r -a RAY_BIN <<<"${MEDRET_RAY:-ray}"
    args=(start --block --disable-usage-stats --num-gpus "$ngpu"
        --resources "$res" --temp-dir "$RAY_TMP"
        --dashboard-agent-listen-port $((PORT_BASE + 10 + 4 * i)) --dashboard-agent-grpc-port $((PORT_BASE + 11 + 4 * i))
        --metrics-export-port $((PORT_BASE + 12 + 4 * i)) --runtime-env-agent-port $((PORT_BASE + 13 + 4 * i)))
    if [ "$role" = head ]; then
        args+=(--head --node-ip-address "$HEAD_IP" --port "$RAY_PORT" --include-dashboard=false
            --dashboard-port $((PORT_BASE + 1)))
    else
        args+=(--address "$HEAD_IP:$RAY_PORT" --node-ip-address "$(medret_node_ip)")
    fi
    medret_log "ray $role (raylet $idx): CUDA_VISIBLE_DEVICES=${cvd:-<none>} num_gpus=$ngpu resources=$res (log: $RUN_DIR/ray-raylet$idx.log)"
    CUDA_VISIBLE_DEVICES="$cvd" exec "${RAY_BIN[@]}" "${args[@]}" >>"$RUN_DIR/ray-raylet$idx.log" 2>&1
}

# Trainer raylet on a trainer node: only the training GPUs are visible to it (and so to every Ray worker).
medret_ray_trainer_task() {
    local role="$1" idx="$2" gpus
    gpus="$(medret_gpu_ids "$TRAIN_GPU_INDICES")" || medret_fail "cannot map the training GPUs"
    medret_ray_node "$role" "$idx" "$gpus" "$(medret_count "$gpus")" '{}'
}

# Retriever raylet: the retriever GPUs, declared as 0 Ray GPUs so no trainer can ever be scheduled on them;
# actors placed with the custom resource see them through CUDA_VISIBLE_DEVICES (Ray told not to override it).
medret_ray_retriever_task() {
    local role="$1" idx="$2" gpus n
    gpus="$(medret_gpu_ids "$RETRIEVER_GPU_INDICES")" || medret_fail "cannot map the retriever GPUs"
    # capacity for the coordinator actor plus one actor per shard
    RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1 \
        medret_ray_node "$role" "$idx" "$gpus" 0 "{\"$RAY_RESOURCE\": 1000}"
}

medret_start_bg() { # command... ; runs it in the background as a child that cleanup stops
    "$@" &
    MEDRET_CHILDREN+=($!)
    LAST_PID=$!
}

# The layout's medret_node_smoke on every node given, at once. Each node's transcript goes to its own file and
# is printed whole, one node after the other, so transcripts never interleave in the job's output.
medret_smoke_on_nodes() { # node...
    local node pid rc=0
    local -a pids=()
    for node in "$@"; do
        medret_start_bg medret_on_node "$node" 'medret_node_smoke >"$RUN_DIR/smoke-$MEDRET_NODE.log" 2>&1'
        pids+=("$LAST_PID")
    done
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
    for node in "$@"; do
        medret_log "rollout smoke transcript of $node:"
        cat "$RUN_DIR/smoke-$node.log" 2>/dev/null
    done
    return "$rc"
}

RAY_PIDS=()
medret_start_raylet() { # like medret_start_bg, and medret_wait_ray watches it
    medret_start_bg "$@"
    RAY_PIDS+=("$LAST_PID")
}

medret_start_trainer_ray() { # trainer nodes, this one first: Ray head here, a trainer raylet on each of the others
    local -a tnodes=("$@")
    local i
    medret_start_raylet medret_ray_trainer_task head 0
    medret_wait_ray 1
    for ((i = 1; i < ${#tnodes[@]}; i++)); do
        medret_start_raylet medret_on_node "${tnodes[$i]}" "medret_ray_trainer_task worker $i"
    done
}

medret_wait_ray() { # expected raylet count; fails at once if a raylet this job started exits
    local wpid pid f
    medret_log "waiting for $1 Ray node(s) at $HEAD_IP:$RAY_PORT"
    "${MEDRET[@]}" ray wait --address "$HEAD_IP:$RAY_PORT" --nodes "$1" --timeout "$HEALTH_TIMEOUT" &
    wpid=$!
    MEDRET_CHILDREN+=($wpid)
    while kill -0 "$wpid" 2>/dev/null; do
        for pid in "${RAY_PIDS[@]}"; do
            if ! kill -0 "$pid" 2>/dev/null; then
                kill -KILL "$wpid" 2>/dev/null || true  # our own waiter, blocked inside ray.init
                for f in "$RUN_DIR"/ray-raylet*.log; do
                    [ -e "$f" ] && { echo "--- $f" >&2; tail -n 8 "$f" >&2; }
                done
                medret_fail "a Ray node of this job exited while the cluster was starting (logs: $RUN_DIR/ray-raylet*.log)"
            fi
        done
        sleep 0.5
    done
    wait "$wpid" || medret_fail "the Ray cluster did not come up with $1 node(s) within ${HEALTH_TIMEOUT}s (logs: $RUN_DIR/ray-raylet*.log, $RAY_TMP)"
    export RAY_ADDRESS="$HEAD_IP:$RAY_PORT"
}

# Wait until a server writes its address file and answers /health; fail the job on exit or timeout.
medret_wait_health() { # address_file pid log timeout -> prints the base URL
    local addr_file="$1" pid="$2" log="$3" timeout="$4" url="" deadline=$((SECONDS + $4))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "the retriever server exited before it was ready; last lines of $log:" >&2
            tail -n 20 "$log" >&2 2>/dev/null
            return 1
        fi
        if [ -z "$url" ] && [ -s "$addr_file" ]; then
            url="$(head -n 1 "$addr_file" | tr -d '[:space:]')"
            case "$url" in
                \{*) url="$(sed -n 's/.*"url" *: *"\([^"]*\)".*/\1/p' "$addr_file" | head -n 1)" ;;
                http://* | https://*) ;;
                *) url="http://$url" ;;
            esac
        fi
        if [ -n "$url" ] && medret_http_ok "$url/health"; then
            echo "$url"
            return 0
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "the retriever was not healthy within ${timeout}s (${url:-no address written to $addr_file}/health)" >&2
            tail -n 20 "$log" >&2 2>/dev/null
            return 1
        fi
        sleep 0.5
    done
}

medret_http_ok() { # url: success only for a 2xx answer
    if command -v curl >/dev/null 2>&1; then
        curl --fail --silent --show-error --max-time 5 -o /dev/null "$1" 2>/dev/null
    else
        # SIGALRM after 5 s bounds the whole exchange (urlopen's timeout is per socket read)
        "${PYTHON:-python3}" -c 'import signal, sys, urllib.request; signal.alarm(5); urllib.request.urlopen(sys.argv[1]).read()' \
            "$1" >/dev/null 2>&1
    fi
}

medret_print_cmd() { # the command, copy-pastable: one --flag value or hydra key=value per line
    local line="" a q
    for a in "$@"; do
        q="$(printf '%q' "$a")"
        if [ -n "$line" ] && { [[ "$a" == --* ]] || [[ "$a" == *=* ]]; }; then
            printf '%s \\\n' "$line"
            line="    $q"
        else
            line="${line:+$line }$q"
        fi
    done
    printf '%s\n' "$line"
}

medret_print_run_cmd() { # dry run: the smoke or training command this job would run, copy-pastable
    if [ "$MEDRET_MODE" = smoke ]; then medret_build_smoke_cmd; medret_print_cmd "${SMOKE_CMD[@]}"
    else medret_build_train_cmd; medret_print_cmd "${TRAIN_CMD[@]}"; fi
}

# Run the main command in the background and wait, so TERM/INT reach the trap at once.
medret_run_main() {
    local rc=0
    "$@" &
    local pid=$!
    MEDRET_CHILDREN+=($pid)
    wait "$pid" || rc=$?
    return "$rc"
}
