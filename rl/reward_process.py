"""User reward functions in their own process: a reward that hangs, exits or eats memory cannot take the learner
with it. Each call has a timeout; on a timeout or a crash the process is replaced and the caller gets a named error.

Built-in rewards (``exact_match``, ...) are hyrl's own pure functions and run in-process; rewards named by import
path (``my_pkg.rewards:score``) run here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import pickle
import signal
import types
from multiprocessing.connection import Connection

STARTUP_TIMEOUT_S = 120.0


class RewardProcessError(RuntimeError):
    """The reward process timed out, exited or was killed; the message says which."""


def _serve(name: str, conn: Connection, memory_mb: int | None) -> None:
    """Child process: import the reward once, then answer calls until the pipe closes."""
    if memory_mb:
        try:
            import resource

            limit = memory_mb << 20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):  # not every OS lets a process cap itself
            pass
    from hyrl.rl.rewards import get_reward

    try:
        fn = get_reward(name)
    except Exception as e:
        conn.send(("error", RuntimeError(str(e))))
        return
    conn.send(("ready", None))
    while True:
        try:
            args, kwargs = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", fn(*args, **kwargs)))
        except MemoryError:
            conn.send(("error", MemoryError(f"ran out of its {memory_mb} MB memory limit")))
        except Exception as e:  # the caller reports it with the sample that raised
            try:
                conn.send(("error", e))
            except Exception:  # an exception that does not pickle
                conn.send(("error", RuntimeError(f"{type(e).__name__}: {e}")))


def _picklable(meta: dict) -> dict:
    """The keyword arguments that can cross a process boundary cheaply. A dataclass (TRL's ``trainer_state``)
    becomes a namespace of its scalar fields, so the reward's process need not import transformers to read
    ``trainer_state.global_step`` (nor receive the growing log history); what does not pickle (a model) is left
    out."""
    scalar = (int, float, str, bool, type(None))
    out = {}
    for k, v in meta.items():
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            v = types.SimpleNamespace(**{f.name: getattr(v, f.name) for f in dataclasses.fields(v)
                                         if isinstance(getattr(v, f.name), scalar)})
        try:
            pickle.dumps(v)
        except Exception:
            continue
        out[k] = v
    return out


def _death(exitcode: int | None) -> str:
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


class RewardProcess:
    """``RewardProcess("pkg.mod:fn", timeout_s=30)(prompts, completions, **meta)`` runs ``fn`` in a child process.

    The child starts on the first call (spawned, so it shares no state with the learner) and is replaced after a
    timeout or a crash.
    """

    def __init__(self, name: str, *, timeout_s: float, memory_mb: int | None = None):
        self.name, self.timeout_s, self.memory_mb = name, timeout_s, memory_mb
        self._proc: mp.process.BaseProcess | None = None
        self._conn: Connection | None = None

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(self.name, child, self.memory_mb), daemon=True,
                                 name=f"hyrl-reward-{self.name}")
        self._proc.start()
        child.close()
        self._conn = parent
        # Starting (interpreter, imports) is not the reward's time: wait for it separately, and generously.
        startup_s = max(STARTUP_TIMEOUT_S, self.timeout_s)
        try:
            status, value = parent.recv() if parent.poll(startup_s) else ("timeout", None)
        except (EOFError, OSError):
            self._proc.join(timeout=5)
            status, value = "died", _death(self._proc.exitcode)
        if status != "ready":
            self.close()
            reason = {"timeout": f"did not start within {startup_s:g} s", "died": f"{value} while starting"}.get(
                status, f"could not load the reward: {value}")
            raise RewardProcessError(f"its process {reason}")

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def __call__(self, prompts: list, completions: list, **meta) -> list[float]:
        if self._proc is None or not self._proc.is_alive():
            self.close()
            self._start()
        assert self._conn is not None and self._proc is not None
        try:
            self._conn.send(((prompts, completions), _picklable(meta)))
            ready = self._conn.poll(self.timeout_s)
            if ready:
                status, value = self._conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError):
            self._proc.join(timeout=5)
            reason = _death(self._proc.exitcode)
            self.close()
            raise RewardProcessError(f"its process {reason}") from None
        if not ready:
            self.close()
            raise RewardProcessError(f"timed out after {self.timeout_s:g} s (algo.reward_timeout_s)")
        if status == "error":
            raise value
        return value

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
