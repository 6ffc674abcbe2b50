"""hyrl: RL post-training for hybrid (Gated DeltaNet + attention) language models.

The repository root is the ``hyrl`` package: ``rl/``, ``rollout/``, ``model/``, ``kernels/``, ``eval/`` and
``tasks/`` install as ``hyrl.rl``, ``hyrl.rollout``, ... and are never importable as top-level modules
(Hugging Face's ``kernels`` package owns that name and transformers probes for it).
"""

__version__ = "0.1.0"
