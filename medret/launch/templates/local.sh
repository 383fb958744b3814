# ---------------------------------------------------------------- layout: local
# One node. Training runs in Ray workers that see only the training GPUs (the Ray head is started with
# CUDA_VISIBLE_DEVICES=<training GPUs> and --num-gpus <their count>). The retriever runs in-process where the
# trainer searches (Search-R1: its main task) on +retriever.gpu_id, which medret's Search-R1 integration makes
# visible to that one process only; the driver itself is started with CUDA_VISIBLE_DEVICES=<retriever GPU>.
medret_main() {
    local train_gpus
    train_gpus="$(medret_gpu_ids "$TRAIN_GPU_INDICES")" || medret_fail "cannot map the training GPUs $TRAIN_GPU_INDICES"
    RETRIEVER_GPU="$(medret_gpu_ids "$RETRIEVER_GPU_INDICES")" || medret_fail "cannot map the retriever GPU"
    export RETRIEVER_GPU
    medret_log "training GPUs: $train_gpus ($N_TRAIN_GPUS, Ray workers); retriever in the trainer process on ${RETRIEVER_GPU:+GPU }${RETRIEVER_GPU:-CPU}"
    if [ "$MEDRET_MODE" = smoke ]; then
        medret_build_smoke_cmd
        if [ "$DRY_RUN" = 1 ]; then
            medret_log "dry run: would run (CUDA_VISIBLE_DEVICES=${RETRIEVER_GPU:-<none>}):"
            medret_print_cmd "${SMOKE_CMD[@]}"
            return 0
        fi
        medret_log "retrieval: in-process (backend local) on node ${NODE_NAMES[0]}"
        CUDA_VISIBLE_DEVICES="$RETRIEVER_GPU" medret_run_main "${SMOKE_CMD[@]}" || medret_fail "the rollout smoke run failed"
        medret_log "done"
        return 0
    fi
    medret_build_train_cmd
    if [ "$DRY_RUN" = 1 ]; then
        medret_log "dry run: would start a Ray head (CUDA_VISIBLE_DEVICES=$train_gpus, $N_TRAIN_GPUS GPUs, port $RAY_PORT), then run with CUDA_VISIBLE_DEVICES=${RETRIEVER_GPU:-<none>}:"
        medret_print_cmd "${TRAIN_CMD[@]}"
        return 0
    fi
    medret_start_raylet medret_ray_trainer_task head 0
    medret_wait_ray 1
    CUDA_VISIBLE_DEVICES="$RETRIEVER_GPU" medret_run_main "${TRAIN_CMD[@]}" || medret_fail "training exited with status $?"
    medret_log "done"
}
