"""Task families and the tiny model folder: deterministic data, honest verifiers, loadable HF output."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from hyrl.tasks import TASKS, get_task


@pytest.mark.parametrize("name", sorted(TASKS))
def test_examples_are_deterministic_per_seed(name: str) -> None:
    task = get_task(name)
    assert task.make(20, seed=1) == task.make(20, seed=1)
    assert task.make(20, seed=1) != task.make(20, seed=2)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_verifier_passes_the_answer_and_fails_a_wrong_one(name: str) -> None:
    task, rng = get_task(name), random.Random(0)
    for ex in task.make(30, seed=3):
        assert task.verify(f" {ex.answer} trailing", ex.answer).score == 1.0
        wrong = task.wrong_answer(ex, rng)
        assert wrong != ex.answer
        verdict = task.verify(wrong, ex.answer)
        assert verdict.score == 0.0 and repr(ex.answer) in verdict.reason


def test_arithmetic_answers_are_sums() -> None:
    for ex in get_task("arithmetic").make(50, seed=0):
        a, b = ex.prompt.rstrip("=").split("+")
        assert int(ex.answer) == int(a) + int(b)


def test_unknown_task_lists_the_available_ones() -> None:
    with pytest.raises(KeyError, match="arithmetic"):
        get_task("sudoku")


def test_tiny_model_folder_loads_with_transformers(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "olmo_hybrid"
    assert model.config.layer_types.count("linear_attention") == 3 * model.config.layer_types.count("full_attention")
    assert tok.tokenize("47+385=") == ["4", "7", "+", "3", "8", "5", "="], "digits must be single tokens"
    chat = tok.apply_chat_template([{"role": "user", "content": "1+1="}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|im_start|>assistant\n")
    ids = tok("12+3=", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], len(tok))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_held_out_split_never_shares_a_prompt_with_training(name: str) -> None:
    from hyrl.tasks import is_held_out, split_examples

    task = get_task(name, **({"max_digits": 1} if name == "arithmetic" else {}))  # the smallest problem space
    train = split_examples(task, 400, seed=0, split="train")
    held = split_examples(task, 50, seed=10_000, split="eval")
    assert len(train) == 400 and len(held) == 50
    assert not {e.prompt for e in train} & {e.prompt for e in held}
    assert all(is_held_out(e.prompt) for e in held) and not any(is_held_out(e.prompt) for e in train)
    assert split_examples(task, 20, seed=0, split="train") == train[:20]  # asking for more only appends


def test_on_policy_pairs_reject_the_models_own_mistake() -> None:
    from hyrl.eval.generate import Generations
    from hyrl.rl.pairs import on_policy_pairs
    from hyrl.tasks import Example

    task = get_task("arithmetic")
    examples = [Example("1+1=", "2"), Example("2+2=", "4"), Example("3+3=", "6")]
    answers = {  # prompt -> (greedy, samples): wrong greedy; right greedy, one wrong sample; never wrong
        "1+1=": ("3", ["2", "3"]), "2+2=": ("4", ["5", "4"]), "3+3=": ("6", ["6", "6"])}

    def scripted(prompts, *, n, max_tokens, temperature, seed):
        picked = [[answers[p][0]] if temperature == 0 else answers[p][1][:n] for p in prompts]
        return Generations(picked, [[1] * len(c) for c in picked], [1] * len(prompts), 0.0)

    rows = on_policy_pairs(scripted, task, examples, num_samples=2, temperature=1.0, max_new_tokens=4, seed=0)
    assert rows == [{"prompt": "1+1=", "chosen": "2", "rejected": "3"},
                    {"prompt": "2+2=", "chosen": "4", "rejected": "5"}]


def test_carry_slip_changes_only_the_demonstrations_of_carrying_sums() -> None:
    """A sloppy teacher's demonstrations: the carry-free sum, on about ``carry_slip`` of the sums that carry; the
    prompts and the answers that rewards and evaluation check stay those of the clean task."""
    from hyrl.config import DataConfig
    from hyrl.rl.data import sft_dataset
    from hyrl.tasks.arithmetic import carry_free_sum

    assert carry_free_sum(47, 385) == 322 and carry_free_sum(12, 7) == 19 and carry_free_sum(95, 5) == 90
    clean, sloppy = get_task("arithmetic").make(2000, 0), get_task("arithmetic", carry_slip=0.6).make(2000, 0)
    assert [(e.prompt, e.answer) for e in clean] == [(e.prompt, e.answer) for e in sloppy]
    carrying = [e for e in sloppy if carry_free_sum(e.meta["a"], e.meta["b"]) != int(e.answer)]
    slipped = [e for e in sloppy if "demonstration" in e.meta]
    assert all(e in carrying and e.meta["demonstration"] == str(carry_free_sum(e.meta["a"], e.meta["b"]))
               for e in slipped)
    # ~ Binomial(len(carrying), 0.6): 5 standard deviations either side
    sd = (len(carrying) * 0.6 * 0.4) ** 0.5
    assert abs(len(slipped) - 0.6 * len(carrying)) < 5 * sd, (len(slipped), len(carrying))
    rows = sft_dataset(DataConfig(task="arithmetic", task_options={"carry_slip": 1.0}, num_train=200))
    assert any(r["completion"] != str(eval(r["prompt"][:-1])) for r in rows), "SFT must imitate the demonstrations"
