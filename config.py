"""The recipe schema: typed configs that mirror the YAML, one per component, validated before anything runs.

A recipe is ``name``, ``seed`` and the sections ``model``, ``data``, ``algo`` (a union keyed on ``type``), ``optim``,
``rollout``, ``learner``, ``ray``, ``eval``, ``checkpoint`` and ``logging``. Unknown keys and wrong types are errors
that name the field path and the fix, e.g. ``algo.beta: expected a number, got 'high'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    """The policy. Either ``path`` (an HF model folder) or ``preset`` (a tiny random-init model built in the run)."""

    path: Path | None = None
    preset: Literal["tiny", "small"] = "tiny"
    architecture: Literal["hybrid", "dense"] = Field("hybrid", description="preset only: 'dense' builds an "
                                                     "all-attention model of the preset's widths (e.g. a teacher)")
    implementation: Literal["hyrl", "transformers"] = "hyrl"
    dtype: Literal["float32", "bfloat16"] = "float32"
    # The recurrent state stays fp32 by default: a bf16 state drifts from the learner's numbers over long rollouts.
    state_dtype: Literal["float32", "bfloat16"] = "float32"


class DataConfig(Section):
    """Prompts and answers from a synthetic task family (or a JSONL file with ``prompt``/``answer`` fields)."""

    task: str = "arithmetic"
    task_options: dict[str, Any] = Field(default_factory=dict, description="difficulty knobs, e.g. {max_digits: 1}")
    path: Path | None = None
    num_train: PositiveInt = 512
    num_eval: PositiveInt = 64
    train_seed: int = 0
    eval_seed: int = 10_000


class SFTAlgo(Section):
    """Supervised fine-tuning on prompt -> answer, loss on the answer tokens only."""

    type: Literal["sft"] = "sft"
    max_length: PositiveInt = 64


class DPOAlgo(Section):
    """Direct preference optimisation on (correct, incorrect) answer pairs.

    pairs: on_policy (the model answers the training prompts, the task verifier judges: chosen = a verified answer
    or the reference, rejected = the model's own wrong answer) or synthetic (chosen = the reference, rejected = a
    made-up near miss).
    """

    type: Literal["dpo"] = "dpo"
    beta: PositiveFloat = 0.1
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    max_length: PositiveInt = 64
    pairs: Literal["on_policy", "synthetic"] = "on_policy"
    num_samples: PositiveInt = Field(4, description="on_policy: sampled answers per prompt, besides the greedy one")
    temperature: PositiveFloat = Field(1.0, description="on_policy: sampling temperature of those answers")
    sft_weight: NonNegativeFloat = Field(0.0, description="weight of an NLL term on the chosen answers added to the "
                                         "preference loss (RPO); keeps DPO from lowering the chosen answers too")


class TISCorrection(Section):
    """Truncated importance sampling: weight each token by min(p_learner / p_rollout, cap)."""

    type: Literal["tis"] = "tis"
    cap: float = Field(2.0, ge=1.0)


class IcePopCorrection(Section):
    """IcePop: drop tokens whose learner/rollout probability ratio leaves [low, high]."""

    type: Literal["icepop"] = "icepop"
    low: float = Field(0.5, gt=0.0, le=1.0)
    high: float = Field(2.0, ge=1.0)


class NoCorrection(Section):
    type: Literal["none"] = "none"


Correction = Annotated[TISCorrection | IcePopCorrection | NoCorrection, Field(discriminator="type")]


class ParityGate(Section):
    """Stop the run when learner-vs-rollout mismatch KL stays above ``max_kl`` for ``patience`` steps in a row."""

    max_kl: PositiveFloat = 1e-2
    patience: PositiveInt = 3


class SFTWarmStart(Section):
    """A short SFT stage on the same task before GRPO, so the policy starts with a non-zero reward."""

    steps: PositiveInt = 300
    lr: PositiveFloat = 3e-3
    batch_size: PositiveInt = 32
    lr_schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="constant leaves the model un-annealed, so the RL stage can still move it "
        "(docs/learning.md)")


class GRPOAlgo(Section):
    """Group-relative policy optimisation on rollouts from the vLLM rollout workers, trained through TRL."""

    type: Literal["grpo"] = "grpo"
    loss: Literal["grpo", "dr_grpo", "dapo", "gspo"] = "grpo"
    num_generations: int = Field(8, ge=2, description="completions per prompt (the group)")
    prompts_per_step: PositiveInt = 8
    kl_coef: NonNegativeFloat = Field(0.0, description="weight of the KL to the initial (reference) model")
    epsilon: PositiveFloat = 0.2
    epsilon_high: PositiveFloat | None = Field(None, description="upper clip; default epsilon (dapo: 0.28)")
    rewards: list[str] = Field(default_factory=lambda: ["exact_match"], min_length=1)
    reward_weights: list[float] | None = None
    reward_timeout_s: PositiveFloat = Field(60.0, description="per call of a user reward (module:function), which "
                                            "runs in its own process")
    reward_memory_mb: PositiveInt | None = Field(None, description="address-space cap of a user reward's process")
    reward_max_failures: PositiveInt | None = Field(None, description="stop the run after this many reward "
                                                    "failures; default: report them and go on")
    mismatch: Correction = TISCorrection()
    parity_gate: ParityGate | None = None
    warm_start: SFTWarmStart | None = None

    @model_validator(mode="after")
    def _weights_match(self) -> GRPOAlgo:
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ValueError(f"reward_weights has {len(self.reward_weights)} entries for {len(self.rewards)} rewards")
        return self


class TeacherConfig(Section):
    """The model a student distills from: a local HF folder, or (offline mode) an OpenAI-compatible server."""

    path: Path | None = Field(None, description="HF model folder (any causal LM: dense, hybrid, MoE)")
    server: str | None = Field(None, description="base URL of an OpenAI-compatible server, e.g. http://host:8000/v1")
    model: str | None = Field(None, description="model name to request from the server")
    temperature: NonNegativeFloat = Field(0.0, description="offline: teacher sampling temperature (0 = greedy)")

    @model_validator(mode="after")
    def _one_source(self) -> TeacherConfig:
        if (self.path is None) == (self.server is None):
            raise ValueError("set exactly one of teacher.path (a model folder) or teacher.server (a URL)")
        return self


class DistillAlgo(Section):
    """Distillation from a chosen teacher.

    offline: the teacher answers the training prompts (rollout workers or a server); the student is SFT-trained on
    those answers. on_policy: the student samples (rollout workers), the teacher scores the student's sequences,
    and the loss is the per-token reverse KL(student || teacher) at every sampled position (GRPO's pipeline).
    logit_kd: forward KL to the teacher's top-k next-token distribution on the data's prompt + answer sequences.
    """

    type: Literal["distill"] = "distill"
    mode: Literal["offline", "on_policy", "logit_kd"] = "offline"
    teacher: TeacherConfig
    max_length: PositiveInt = 64
    filter_correct: bool = Field(False, description="offline: keep only teacher answers the task verifier accepts")
    top_k: PositiveInt = Field(8, description="logit_kd: teacher log-probs kept per position")
    num_generations: int = Field(4, ge=2, description="on_policy: student samples per prompt")
    prompts_per_step: PositiveInt = 8
    mismatch: Correction = TISCorrection()
    warm_start: SFTWarmStart | None = Field(None, description="on_policy: SFT on the task first")

    @model_validator(mode="after")
    def _server_is_offline_only(self) -> DistillAlgo:
        if self.teacher.server is not None and self.mode != "offline":
            raise ValueError(f"mode {self.mode} needs the teacher's log-probs on the student's tokens; a server "
                             "teacher only works with mode: offline (or give teacher.path)")
        return self


Algo = Annotated[SFTAlgo | DPOAlgo | GRPOAlgo | DistillAlgo, Field(discriminator="type")]


class OptimConfig(Section):
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.0
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["cosine", "constant"] = Field("cosine", description="after the linear warmup")
    max_steps: PositiveInt = 100
    batch_size: PositiveInt = 16
    grad_accum: PositiveInt = 1
    max_grad_norm: PositiveFloat = 1.0
    max_nonfinite_steps: PositiveInt = Field(3, description="SFT/DPO: a step with a NaN/inf gradient is skipped; "
                                             "this many in a row stop the run, naming the last good checkpoint")


class RolloutConfig(Section):
    """Generation settings for rollouts and evaluation, and the rollout workers (vLLM engines in Ray actors)."""

    num_workers: PositiveInt = 1
    num_gpus_per_worker: NonNegativeFloat = Field(0.0, description="0 on CPU; 1 gives each engine its own GPU")
    num_cpus_per_worker: PositiveFloat = 1.0
    max_new_tokens: PositiveInt = 16
    temperature: PositiveFloat = 1.0
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_staleness: int = Field(0, ge=0, description="async: rollouts may lag the learner by this many steps")
    chunk_size: PositiveInt | None = Field(None, description="prompts per request to one worker; idle workers take "
                                           "the next chunk (default: one chunk per worker)")
    request_timeout_s: PositiveFloat | None = Field(None, description="a chunk not back by then goes to another "
                                                    "worker and its worker is restarted (default: no timeout)")
    max_model_len: PositiveInt = 512
    gpu_memory_utilization: float = Field(0.5, gt=0.0, le=1.0, description="GPU only: vLLM's share of the GPU")
    enforce_eager: bool = Field(False, description="no CUDA graphs / compile (slower; faster start on CPU)")
    implementation: Literal["hyrl", "vllm"] = Field("hyrl", description="hyrl: hyrl's model class inside vLLM "
                                                    "(fp32 GDN state, the learner's math); vllm: vLLM's own class")
    max_num_seqs: PositiveInt = Field(256, description="sequences an engine runs at once (vLLM's max_num_seqs); "
                                      "a GRPO step's prompts x generations beyond it wait for a second wave")
    max_num_batched_tokens: PositiveInt = Field(2048, description="tokens per engine step; longer prompts are "
                                                "prefilled in chunks of this size")


class LearnerConfig(Section):
    """The learner workers: data-parallel copies of TRL's trainer in Ray actors (gradients all-reduced)."""

    num_workers: PositiveInt = 1
    num_gpus_per_worker: NonNegativeFloat = Field(0.0, description="0 on CPU (gloo); 1 per worker on GPUs (NCCL)")
    num_cpus_per_worker: PositiveFloat = 1.0
    sharding: Literal["ddp", "fsdp2"] = Field("ddp", description="ddp: full copies; fsdp2: parameters sharded "
                                              "across workers (GPUs only)")
    sync_bucket_mib: PositiveInt = Field(256, description="weights go to the rollout workers in buckets of this size")


class RayConfig(Section):
    """Where the actors run: a local Ray cluster (default) or an existing one, and how they are placed."""

    address: str | None = Field(None, description="join this cluster, e.g. 'auto' or 'ray://head:10001' (default: "
                                "start a local one)")
    placement: Literal["separate", "colocate"] = Field("separate", description="separate: learner and rollout "
                                                        "workers get their own resources; colocate: learner worker i "
                                                        "shares GPU i with rollout worker i (vLLM sleeps while the "
                                                        "learner steps; GPUs only)")
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement-group strategy over the workers' bundles (PACK: as few nodes as possible)")
    num_cpus: PositiveInt | None = Field(None, description="local cluster only: logical CPUs (default: enough for "
                                         "the workers)")
    object_store_mib: PositiveInt = Field(256, description="local cluster only: Ray's shared-memory object store, "
                                          "which holds one published copy of the weights (give it ~2x the model's "
                                          "bytes, e.g. 32768 for a 7B in bf16)")
    placement_timeout_s: PositiveFloat = Field(120.0, description="how long to wait for the cluster to have room")


class EvalConfig(Section):
    """Held-out evaluation during training (``hyrl eval`` takes the same settings as flags). Every run is evaluated
    at its start and end with these settings; ``every_n_steps`` adds evaluations in between."""

    every_n_steps: int = Field(0, ge=0, description="0: only at the start and the end of the run")
    tasks: list[str] = Field(default_factory=list, description="task families or files; default: data.task")
    task_options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per task, e.g. "
                                                    "{arithmetic: {max_digits: 1}}; default: data.task_options")
    num_examples: PositiveInt | None = Field(None, description="held-out prompts; default: data.num_eval")
    num_samples: PositiveInt = Field(1, description="samples per prompt; pass@k is logged up to this k")
    temperature: NonNegativeFloat | None = Field(None, description="default: 0 for one sample, 1 for several")
    max_new_tokens: PositiveInt | None = Field(None, description="default: rollout.max_new_tokens")


class CheckpointConfig(Section):
    every_n_steps: int = Field(50, ge=0, description="0 saves only the final model")
    keep_last: PositiveInt = 2
    resume: bool = False


class LoggingConfig(Section):
    run_dir: Path | None = Field(None, description="default: runs/<recipe name>")
    every_n_steps: PositiveInt = 5
    tensorboard: bool = True
    progress: bool = True


class Recipe(Section):
    """A whole run, as written in ``recipes/*.yaml``.

    Relative paths (``model.path``, ``data.path``, ``algo.teacher.path``, ``logging.run_dir``) are relative to the
    current working directory, not to the recipe file: the shipped recipes name other runs' outputs such as
    ``runs/sft_tiny/final``, which are made under the directory ``hyrl train`` runs in. ``hyrl validate`` prints each
    path resolved.
    """

    name: str
    seed: int = 0
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    algo: Algo
    optim: OptimConfig = OptimConfig()
    rollout: RolloutConfig = RolloutConfig()
    learner: LearnerConfig = LearnerConfig()
    ray: RayConfig = RayConfig()
    eval: EvalConfig = EvalConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _default_run_dir(self) -> Recipe:
        if self.logging.run_dir is None:
            self.logging.run_dir = Path("runs") / self.name
        return self

    @model_validator(mode="after")
    def _placement_fits(self) -> Recipe:
        learner, rollout = self.learner, self.rollout
        if self.ray.placement == "colocate":
            if learner.num_gpus_per_worker == 0 or rollout.num_gpus_per_worker == 0:
                raise ValueError("ray.placement: colocate shares GPUs between learner and rollout workers and frees "
                                 "the rollout memory with vLLM sleep/wake during the learner step; that is "
                                 "unavailable on CPU (fix: placement: separate, or give learner.num_gpus_per_worker "
                                 "and rollout.num_gpus_per_worker > 0)")
            if learner.num_workers != rollout.num_workers:
                raise ValueError(f"ray.placement: colocate puts rollout worker i beside learner worker i, so "
                                 f"rollout.num_workers ({rollout.num_workers}) must equal learner.num_workers "
                                 f"({learner.num_workers})")
            if learner.num_gpus_per_worker + rollout.num_gpus_per_worker > 1:
                raise ValueError("ray.placement: colocate: learner.num_gpus_per_worker + rollout.num_gpus_per_worker "
                                 "must be <= 1 (they share one GPU; e.g. 0.5 each)")
            if rollout.max_staleness:
                raise ValueError("rollout.max_staleness: colocated engines sleep during the learner step, so they "
                                 "cannot sample ahead (fix: max_staleness: 0, or ray.placement: separate)")
        if learner.sharding == "fsdp2" and learner.num_gpus_per_worker == 0:
            raise ValueError("learner.sharding: fsdp2 shards parameters across GPUs; on CPU use sharding: ddp")
        if learner.num_workers > 1 and self.algo.type not in ("grpo", "distill"):
            raise ValueError(f"learner.num_workers: {learner.num_workers} learner workers run GRPO and on-policy "
                             f"distillation; algo.type {self.algo.type} trains in one process (fix: num_workers: 1)")
        if learner.num_workers > 1 and self.algo.type == "distill" and self.algo.mode != "on_policy":
            raise ValueError(f"learner.num_workers: several learner workers need algo.mode: on_policy (got "
                             f"{self.algo.mode}; fix: learner.num_workers: 1)")
        group = getattr(self.algo, "num_generations", 1) * getattr(self.algo, "prompts_per_step", 1)
        if learner.num_workers > 1 and group % learner.num_workers:
            raise ValueError(f"learner.num_workers: the global batch (algo.prompts_per_step x algo.num_generations "
                             f"= {group}) must split evenly over {learner.num_workers} learner workers")
        return self

    @property
    def run_dir(self) -> Path:
        assert self.logging.run_dir is not None
        return self.logging.run_dir


# ---------------------------------------------------------------------------------------------------------------
# Loading: YAML + command-line overrides -> Recipe, with errors that name the field and the fix.
# ---------------------------------------------------------------------------------------------------------------


class RecipeError(ValueError):
    """A recipe that cannot run; ``problems`` holds one ``field.path: what is wrong (fix)`` line each."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{source}: invalid recipe\n" + "\n".join(f"  - {p}" for p in problems))


ALGO_TYPES = ("sft", "dpo", "grpo")


def _fields_at(loc: tuple) -> list[str]:
    """The valid keys of the section at ``loc`` (for 'unknown key' messages)."""
    model: type[BaseModel] | None = Recipe
    for part in loc:
        field = model.model_fields.get(str(part)) if model else None
        if field is None:
            return []
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return sorted(model.model_fields) if model else []


def _describe(err: dict) -> str:
    loc = tuple(err["loc"])
    if len(loc) >= 2 and loc[0] == "algo" and loc[1] in ALGO_TYPES:
        algo_cls = {"sft": SFTAlgo, "dpo": DPOAlgo, "grpo": GRPOAlgo}[loc[1]]
        loc = ("algo", *loc[2:])
    else:
        algo_cls = None
    path = ".".join(str(p) for p in loc) or "<recipe>"
    kind, got = err["type"], err.get("input")
    if kind == "extra_forbidden":
        valid = sorted(algo_cls.model_fields) if algo_cls and len(loc) == 2 else _fields_at(loc[:-1])
        return f"{path}: unknown key (fix: remove it or use one of: {', '.join(valid)})"
    if kind in ("float_parsing", "float_type"):
        return f"{path}: expected a number, got {got!r}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{path}: expected an integer, got {got!r}"
    if kind in ("bool_parsing", "bool_type"):
        return f"{path}: expected true or false, got {got!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = next(iter(err.get("ctx", {}).items()), ("", ""))
        op = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}.get(bound[0], bound[0])
        return f"{path}: must be {op} {bound[1]}, got {got!r}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        ctx = err.get("ctx", {})
        expected = ctx.get("expected_tags", ", ".join(ALGO_TYPES)).replace("'", "")
        what = loc[-1] if loc else "section"
        return f"{path}.type: unknown {what} type {ctx.get('tag', got)!r} (fix: one of {expected})"
    if kind == "literal_error":
        return f"{path}: expected {err['ctx']['expected']}, got {got!r}"
    if kind == "missing":
        return f"{path}: required field is missing"
    if kind == "value_error":  # a validator's own message; recipe-level ones start with the field they are about
        msg = err["msg"].removeprefix("Value error, ")
        return msg if not loc else f"{path}: {msg}"
    return f"{path}: {err['msg']}, got {got!r}"


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Set ``a.b.c=value`` pairs into the raw recipe dict; values are parsed as YAML (``lr=1e-3`` is a float).

    Errors name the override they come from, e.g. ``override 'optim.lr=[1': not valid YAML (...)``.
    """
    import yaml

    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RecipeError("command line", [f"override {item!r}: overrides look like key.path=value"])
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            if node.get(part) is None:  # `optim:` with nothing under it reads as None
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise RecipeError("command line", [f"override {item!r}: {part} is not a section"])
        try:
            node[leaf] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise RecipeError("command line", [f"override {item!r}: not valid YAML ({_yaml_reason(e)})"]) from None
    return raw


def _from_override(problem: str, overrides: list[str]) -> str | None:
    """``optim.lr: expected ...`` -> ``optim.lr (from the override optim.lr=abc): expected ...`` when an override
    set that field (or a section above it); None when the problem is the file's."""
    field, sep, rest = problem.partition(": ")
    for item in reversed(overrides):  # the last override of a key is the one that counts
        key = item.partition("=")[0]
        if sep and (field == key or field.startswith(key + ".")):
            return f"{field} (from the override {item}): {rest}"
    return None
SHIPPED_RECIPES = Path(__file__).resolve().parent / "recipes"


def shipped_outputs() -> dict[Path, Path]:
    """Each shipped recipe's final model folder (``<run_dir>/final``, from the working directory) -> the recipe.

    Recipes that start from another's result (DPO from SFT, distillation from a teacher) name such a folder; on a
    fresh clone it does not exist yet, and this says which run makes it.
    """
    import yaml

    out = {}
    for recipe in sorted(SHIPPED_RECIPES.glob("*.yaml")):
        raw = yaml.safe_load(recipe.read_text()) or {}
        run_dir = (raw.get("logging") or {}).get("run_dir") or Path("runs") / str(raw.get("name", recipe.stem))
        out[(Path(run_dir) / "final").resolve()] = recipe
    return out


def _missing_model(field: str, path: Path, fix: str) -> str:
    """``field: ...`` for a model folder without config.json; names the command that makes it when one does."""
    recipe = shipped_outputs().get(path.resolve())
    if recipe is None:
        what = "no such folder" if not path.exists() else "no config.json in folder"
        return f"{field}: {what} {str(path)!r} (fix: {fix})"
    shown = recipe.relative_to(Path.cwd()) if recipe.is_relative_to(Path.cwd()) else recipe
    what = "does not exist" if not path.exists() else "has no config.json (an unfinished run?)"
    return f"{field}: {path} {what}; produce it with: hyrl train {shown}"


def recipe_paths(recipe: Recipe) -> list[tuple[str, Path]]:
    """The files and folders a recipe names, each as ``(field, absolute path)``; relative paths are taken from the
    current working directory (see ``Recipe``)."""
    teacher = getattr(recipe.algo, "teacher", None)
    named = [("model.path", recipe.model.path), ("data.path", recipe.data.path),
             ("algo.teacher.path", teacher.path if teacher is not None else None),
             ("logging.run_dir", recipe.logging.run_dir)]
    return [(field, path.resolve()) for field, path in named if path is not None]


def _check_model(field: str, path: Path, fix: str) -> str | None:
    """A model folder's problem (missing, no config.json, corrupt or truncated weights), or None."""
    if not (path / "config.json").is_file():
        return _missing_model(field, path, fix)
    from hyrl.eval.checkpoint import CheckpointError, check_checkpoint  # lazily: it is not needed to parse a recipe

    try:
        check_checkpoint(path)
    except CheckpointError as e:
        return f"{field}: {e}"
    return None


def check_paths(recipe: Recipe) -> list[str]:
    """Problems with files the recipe names (checked after the schema, before anything starts)."""
    problems = []
    if recipe.model.path is not None:
        problems.append(_check_model(
            "model.path", recipe.model.path, f"point it at a Hugging Face model folder, or remove it to build the "
            f"tiny '{recipe.model.preset}' preset; for a run's output use <run_dir>/final"))
    try:
        from hyrl.tasks import get_task

        get_task(recipe.data.task, **recipe.data.task_options)
    except KeyError as e:
        field = "data.task" if "unknown task" in str(e) else "data.task_options"
        problems.append(f"{field}: {e.args[0]}")
    for i, name in enumerate(recipe.eval.tasks):
        try:
            from hyrl.eval.run import EvalSettings, build_tasks

            build_tasks(EvalSettings(tasks=[name], task_options=recipe.eval.task_options))
        except KeyError as e:
            problems.append(f"eval.tasks[{i}]: {e.args[0]}")
        except (ValueError, OSError) as e:
            problems.append(f"eval.tasks[{i}]: {e}")
    for i, name in enumerate(getattr(recipe.algo, "rewards", [])):
        from hyrl.rl.rewards import get_reward

        try:
            get_reward(name)
        except KeyError as e:
            problems.append(f"algo.rewards[{i}]: {e.args[0]} (fix: a registered name, or module:function importable "
                            f"from the working directory or PYTHONPATH)")
    teacher = getattr(recipe.algo, "teacher", None)
    if teacher is not None and teacher.path is not None:
        problems.append(_check_model("algo.teacher.path", teacher.path,
                                     "a Hugging Face model folder, e.g. a teacher's <run_dir>/final"))
    data = recipe.data.path
    if data is not None and data.is_dir():
        problems.append(f"data.path: {str(data)!r} is a directory (fix: a JSONL file with prompt/answer)")
    elif data is not None and not data.is_file():
        problems.append(f"data.path: no such file {str(data)!r} (fix: a JSONL file with prompt/answer)")
    return [p for p in problems if p is not None]


class DuplicateKeyError(Exception):
    """The same key twice in one YAML mapping; plain ``yaml.safe_load`` silently keeps the last one."""


def _yaml_reason(e: Exception) -> str:
    """A YAML error as ``problem at line L, column C`` (its mark already names the file when it has one)."""
    import yaml

    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        mark = e.problem_mark
        where = "" if mark.name.startswith("<") else f"{mark.name}, "
        return f"{e.problem} at {where}line {mark.line + 1}, column {mark.column + 1}"
    return str(e)


def _recipe_loader():
    """``yaml.SafeLoader`` that rejects duplicate keys at any depth, naming the key path and both lines."""
    import yaml

    class RecipeLoader(yaml.SafeLoader):
        def get_single_node(self):
            node = super().get_single_node()
            self.key_paths: dict[int, str] = {}
            self._index(node, "")
            return node

        def _index(self, node, path: str) -> None:
            if isinstance(node, yaml.MappingNode) and id(node) not in self.key_paths:
                self.key_paths[id(node)] = path
                for key, value in node.value:
                    self._index(value, f"{path}.{key.value}" if path else str(key.value))
            elif isinstance(node, yaml.SequenceNode):
                for i, item in enumerate(node.value):
                    self._index(item, f"{path}[{i}]")

        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                if key in seen:
                    parent = self.key_paths.get(id(node), "")
                    raise DuplicateKeyError(f"{parent + '.' if parent else ''}{key}: duplicate key (lines "
                                            f"{seen[key]} and {line}; fix: keep one)")
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return RecipeLoader


def read_yaml(path: Path) -> Any:
    """``yaml.safe_load`` of a file, stricter: duplicate keys, non-UTF-8 bytes and syntax errors are RecipeErrors
    naming the file (and the line)."""
    import yaml

    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(str(path), [f"not a UTF-8 text file (byte 0x{data[e.start]:02x} at offset {e.start}; "
                                      "a recipe is YAML text)"]) from None
    if "\x00" in text:
        raise RecipeError(str(path), [f"a binary file (NUL byte at offset {text.index(chr(0))}; a recipe is YAML "
                                      "text)"])
    loader = _recipe_loader()(text)
    loader.name = str(path)  # marks otherwise say "<unicode string>"
    try:
        return loader.get_single_data()
    except DuplicateKeyError as e:
        raise RecipeError(str(path), [str(e)]) from None
    except yaml.YAMLError as e:
        raise RecipeError(str(path), [f"not valid YAML: {_yaml_reason(e)}"]) from None
    finally:
        loader.dispose()


def load_recipe(path: str | Path, overrides: list[str] | None = None, *, paths: bool = True) -> Recipe:
    """Read, override and validate a recipe; raises RecipeError listing every problem found.

    Problems caused by a command-line override name it; when all of them do, the source is "command line".
    """
    from pydantic import ValidationError

    path, overrides = Path(path), overrides or []
    if path.is_dir():
        raise RecipeError(str(path), ["is a directory (fix: give a recipe .yaml file)"])
    if not path.is_file():
        raise RecipeError(str(path), ["no such recipe file (fix: check the path; recipes live in recipes/)"])
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise RecipeError(str(path), ["the top level must be a mapping of sections"])
    raw = apply_overrides(raw, overrides)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        _reject(path, [_describe(err) for err in e.errors()], overrides)
    problems = check_paths(recipe) if paths else []
    if problems:
        _reject(path, problems, overrides)
    return recipe


def _reject(path: Path, problems: list[str], overrides: list[str]) -> None:
    """Raise RecipeError, each problem attributed to the override that caused it, if one did."""
    attributed = [_from_override(p, overrides) for p in problems]
    source = "command line" if all(attributed) else str(path)
    raise RecipeError(source, [a or p for a, p in zip(attributed, problems, strict=True)]) from None


def dump_recipe(recipe: Recipe, out: Path) -> None:
    """Write the resolved recipe (defaults filled in) as YAML: the run folder's record of what ran."""
    import yaml

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
