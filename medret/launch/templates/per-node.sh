# ---------------------------------------------------------------- layout: per-node
# Every node runs its own `medret serve` on its retriever GPU, on 127.0.0.1 with a free port (--port 0) that
# it writes to an address file; the job waits until each answers /health and fails if one does not.
medret_node_serve() {
    local gpus addr log pid url node="$MEDRET_NODE"
    gpus="$(medret_gpu_ids "$RETRIEVER_GPU_INDICES")" || medret_fail "cannot map the retriever GPU"
    addr="$RUN_DIR/retriever-$node.addr"
    log="$RUN_DIR/retriever-$node.log"
    rm -f "$addr" "$RUN_DIR/ready-$node" "$RUN_DIR/failed-$node"
    medret_build_retriever_cmd
    local -a cmd=("${RETRIEVER_CMD[@]}" --host 127.0.0.1 --port 0 --address-file "$addr")
    medret_log "starting the retriever server on ${gpus:+GPU }${gpus:-CPU} (CUDA_VISIBLE_DEVICES=${gpus:-<none>}): ${cmd[*]}"
    CUDA_VISIBLE_DEVICES="$gpus" "${cmd[@]}" >"$log" 2>&1 &
    pid=$!
    MEDRET_CHILDREN+=($pid)
    if ! url="$(medret_wait_health "$addr" "$pid" "$log" "$HEALTH_TIMEOUT")"; then
        : >"$RUN_DIR/failed-$node"
        medret_fail "the retriever server on $node did not become healthy (log: $log)"
    fi
    echo "$url" >"$RUN_DIR/ready-$node.tmp" && mv -f "$RUN_DIR/ready-$node.tmp" "$RUN_DIR/ready-$node"
    medret_log "retriever ready at $url (node $node, pid $pid)"
    wait "$pid" || true
}

medret_node_smoke() {
    RETRIEVER_URL="$(cat "$RUN_DIR/ready-$MEDRET_NODE")"
    export RETRIEVER_URL
    medret_build_smoke_cmd
    medret_log "rollout smoke on $MEDRET_NODE against this node's retriever $RETRIEVER_URL"
    "${SMOKE_CMD[@]}"
}

medret_wait_ready() { # node... : every node's server healthy, or fail the job
    local deadline=$((SECONDS + HEALTH_TIMEOUT + 60)) node all pid
    while :; do
        all=1
        for node in "$@"; do
            [ -e "$RUN_DIR/failed-$node" ] && medret_fail "the retriever on $node could not start (log: $RUN_DIR/retriever-$node.log)"
            [ -s "$RUN_DIR/ready-$node" ] || all=0
        done
        [ "$all" = 1 ] && return 0
        for pid in "${SERVE_PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null || medret_fail "a retriever step exited before it was ready (logs: $RUN_DIR/retriever-*.log)"
        done
        [ "$SECONDS" -ge "$deadline" ] && medret_fail "the retrievers were not ready within ${HEALTH_TIMEOUT}s"
        sleep 0.5
    done
}

medret_main() {
    local node i
    local -a nodes=("${NODE_NAMES[@]:0:$NODES_PLANNED}")
    medret_log "per-node retrievers on ${nodes[*]} (GPU index ${RETRIEVER_GPU_INDICES:-none: CPU}); training GPU indices $TRAIN_GPU_INDICES on each node"
    if [ "$DRY_RUN" = 1 ]; then
        RETRIEVER_URL="http://127.0.0.1:<port from $RUN_DIR/ready-${nodes[0]}>"
        medret_build_retriever_cmd
        medret_log "dry run: would start on each node, then wait on /health (${HEALTH_TIMEOUT}s):"
        medret_print_cmd "${RETRIEVER_CMD[@]}" --host 127.0.0.1 --port 0 --address-file "$RUN_DIR/retriever-<node>.addr"
        medret_log "then run:"
        medret_print_run_cmd
        return 0
    fi
    SERVE_PIDS=()
    for node in "${nodes[@]}"; do
        medret_start_bg medret_on_node "$node" medret_node_serve
        SERVE_PIDS+=("$LAST_PID")
    done
    medret_wait_ready "${nodes[@]}"
    RETRIEVER_URL="$(cat "$RUN_DIR/ready-${nodes[0]}")"
    export RETRIEVER_URL
    if [ "$MEDRET_MODE" = smoke ]; then
        medret_smoke_on_nodes "${nodes[@]}" || medret_fail "the rollout smoke run failed on a node"
        medret_log "done"
        return 0
    fi
    medret_start_trainer_ray "${nodes[@]}"
    medret_wait_ray "${#nodes[@]}"
    medret_build_train_cmd
    medret_run_main "${TRAIN_CMD[@]}" || medret_fail "training exited with status $?"
    medret_log "done"
}
