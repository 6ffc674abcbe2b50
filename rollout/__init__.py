"""hyrl.rollout: sampling from the current policy with vLLM, correctly (fp32 GDN state) and fast (graphs on).

Map (dataflow order):
    vllm_plugin.py      vLLM entry point: registers hyrl's Olmo Hybrid for olmo_hybrid checkpoints
    olmo_hybrid_vllm.py the model (HF parameter names, transformers' math) built from vLLM layers
    gdn_layer.py        the GDN mixer; its stateful core is one custom op (torch.ops.vllm.hyrl_gdn_core)
    gdn_core.py         conv + gates + delta rule over the engine's paged state (plain torch / hyrl kernels)
    engine.py           EngineConfig, environment and ``vllm.LLM`` construction
    weights.py          weight transfer: one interface, object store (CPU) and bucketed NCCL (GPU) paths
    worker.py           RolloutWorker: one engine; generate / update_weights / health
    pool.py             RolloutPool: N workers as Ray actors, load balancing, crash recovery
    batch.py            Sampling and RolloutBatch (the hand-off to the learner)
    mismatch.py         rollout-vs-learner log-prob mismatch (per-token KL, max |delta|)

vLLM is imported only in this package, and lazily: importing ``hyrl.rollout`` does not import vLLM.
"""
