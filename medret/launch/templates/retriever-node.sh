# ---------------------------------------------------------------- layout: retriever-node
# The retriever is a Ray actor on a dedicated raylet: the last node (nodes >= 2), or a second raylet on the one
# node that owns only the retriever GPUs. That raylet declares 0 Ray GPUs and the custom resource
# $RAY_RESOURCE, so training is never scheduled on its GPUs; the actor is placed there by that resource.
medret_node_smoke() {
    medret_build_smoke_cmd
    medret_log "rollout smoke on $MEDRET_NODE through the Ray actor (RAY_ADDRESS=$RAY_ADDRESS, job $MEDRET_RAY_JOB)"
    "${SMOKE_CMD[@]}"
}

medret_main() {
    local n=$NODES_PLANNED i raylets
    local -a trainers
    if [ "$n" -ge 2 ]; then
        trainers=("${NODE_NAMES[@]:0:$((n - 1))}")
        RETRIEVER_HOST="${NODE_NAMES[$((n - 1))]}"
        raylets=$n
    else
        trainers=("${NODE_NAMES[0]}")
        RETRIEVER_HOST="${NODE_NAMES[0]}"
        raylets=2
    fi
    medret_log "retriever node: $RETRIEVER_HOST (GPU index ${RETRIEVER_GPU_INDICES:-none: CPU}, $SHARDS shard(s)); trainer nodes: ${trainers[*]} (GPU indices $TRAIN_GPU_INDICES)"
    if [ "$DRY_RUN" = 1 ]; then
        RAY_ADDRESS="$HEAD_IP:$RAY_PORT"
        medret_build_retriever_cmd
        medret_log "dry run: would start Ray (head $RAY_ADDRESS, $raylets raylets), create the retriever actor with:"
        medret_print_cmd "${RETRIEVER_CMD[@]}"
        medret_log "then run (attached to that actor):"
        medret_print_run_cmd
        return 0
    fi
    medret_start_trainer_ray "${trainers[@]}"
    if [ "$n" -ge 2 ]; then
        medret_start_raylet medret_on_node "$RETRIEVER_HOST" "medret_ray_retriever_task worker $((n - 1))"
    else
        medret_start_raylet medret_ray_retriever_task worker 1
    fi
    medret_wait_ray "$raylets"
    medret_log "creating the retriever actor (waits up to ${HEALTH_TIMEOUT}s)"
    medret_build_retriever_cmd
    "${RETRIEVER_CMD[@]}" || medret_fail "the retriever actor did not start on $RETRIEVER_HOST"
    if [ "$MEDRET_MODE" = smoke ]; then
        medret_smoke_on_nodes "${trainers[@]}" || medret_fail "the rollout smoke run failed on a trainer node"
        medret_log "done"
        return 0
    fi
    medret_build_train_cmd
    medret_run_main "${TRAIN_CMD[@]}" || medret_fail "training exited with status $?"
    medret_log "done"
}
