"""`rows_per_pass`: the post's rows per optimizer step in fewer, larger passes, with the same result.

The same rows in the same order, trained as the post groups them (2 rows a pass, 4 passes a step) and as
one pass of 8: the per-step losses and the trained adapter must agree within rounding (float32 on a CPU,
bf16 on a GPU). The control is the defect regrouping must not bring: a loss that is each pass's mean
(then averaged over the passes) instead of the step's sum over its answer tokens divided by their count,
which weighs a short row's tokens more when it shares a pass with fewer tokens."""
import random

import pytest

from fixtures import training
from tools.preflight import check_combinations
from helpers.model import memory
from helpers.params import DEFAULTS, ParameterError
from helpers.training import arguments

GIB = 2**30


def rows(n: int = 80, seed: int = 0) -> list[list[int]]:
    """Short rows of a few easy tokens and long rows of many, in random order: a batch of 2 carries padding,
    and the rows' losses part as soon as training starts, so a loss that weighs rows wrongly shows."""
    rng = random.Random(seed)
    short = lambda: [rng.randrange(5, 9) for _ in range(rng.randrange(6, 12))]  # noqa: E731
    long = lambda: [rng.randrange(5, 500) for _ in range(rng.randrange(40, 60))]  # noqa: E731
    return [short() if rng.random() < 0.5 else long() for _ in range(n)]


def train(values: dict, data, per_pass_mean: bool = False):
    """Per-step losses, the LoRA weights after training, and the passes the trainer ran, for 02's LoRA and
    04's SFTConfig made by the notebooks with `values`. `per_pass_mean`: each pass's loss is its own
    tokens' mean (the defect)."""
    from datasets import Dataset

    ns = training.prepared(values)
    m, tok, _ = training.lora_model(values["run_dir"])
    before = {k: v.detach().float().clone() for k, v in m.named_parameters() if "lora_" in k}
    kwargs, differences = ns["args"].to_dict(), ns["differences"]
    t = training.trainer(values["run_dir"], m, tok, Dataset.from_dict({"input_ids": data}), save_strategy="no",
                         disable_tqdm=True, report_to="none")
    passes = []
    step = t.training_step

    def counted(model, inputs, *a, **kw):
        passes.append(int(inputs["input_ids"].shape[0]))
        if per_pass_mean:  # without the step's token count transformers takes the pass's mean / passes
            return step(model, inputs, None)
        return step(model, inputs, *a, **kw)

    t.training_step = counted
    t.train()
    losses = [h["loss"] for h in t.state.log_history if "loss" in h]
    after = {k: v.detach().float().clone() for k, v in m.named_parameters() if "lora_" in k}
    return losses, {k: after[k] - before[k] for k in after}, passes, kwargs, differences


def gap(a: dict, b: dict) -> float:
    """How far apart two adapters' updates are, relative to the update itself."""
    import torch

    num = sum(float(torch.linalg.vector_norm(a[k] - b[k]) ** 2) for k in a)
    den = sum(float(torch.linalg.vector_norm(a[k]) ** 2) for k in a)
    return (num / den) ** 0.5


def compare(tiny_values, loss_tol: float, adapter_tol: float):
    post = {**tiny_values, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4, "max_steps": 4,
            "learning_rate": 5e-3}
    data = rows()
    losses_a, update_a, passes_a, _, _ = train(post, data)
    one_pass = {**post, "rows_per_pass": 8, "run_dir": post["run_dir"] + "-one-pass"}
    losses_b, update_b, passes_b, kwargs, differences = train(one_pass, data)
    assert passes_a == [2] * 16 and kwargs["per_device_train_batch_size"] == 8
    assert passes_b == [8] * 4  # one pass a step
    assert ("rows a pass x passes a step", "2 x 4", "8 x 1") == differences[0][:3]
    relative = max(abs(a - b) / abs(a) for a, b in zip(losses_a, losses_b))
    assert relative < loss_tol, (losses_a, losses_b)
    assert gap(update_a, update_b) < adapter_tol
    # the control: the post's passes with each pass's mean loss are no longer the one pass of 8
    losses_c, update_c, _, _, _ = train({**post, "run_dir": post["run_dir"] + "-control"}, data, per_pass_mean=True)
    control = max(abs(b - c) / abs(b) for b, c in zip(losses_b, losses_c)), gap(update_b, update_c)
    print(f"same rows: loss {relative:.2e}, adapter {gap(update_a, update_b):.2e}; per-pass mean: "
          f"loss {control[0]:.2e}, adapter {control[1]:.2e}")
    assert control[0] > 3 * loss_tol and control[1] > 3 * adapter_tol, control
    return relative, gap(update_a, update_b)


def test_one_pass_of_eight_rows_trains_as_four_passes_of_two(tiny_values):
    """On a CPU, in float32, through transformers."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("the GPU test below covers the unsloth path")
    compare(tiny_values, loss_tol=1e-5, adapter_tol=1e-3)


@pytest.mark.gpu
def test_one_pass_of_eight_rows_trains_as_four_passes_of_two_on_the_gpu(tiny_values):
    """On the unsloth backend in bf16."""
    compare(tiny_values, loss_tol=2e-3, adapter_tol=5e-2)


def test_rows_per_pass_must_divide_the_rows_of_a_step():
    params = {**DEFAULTS, "rows_per_pass": 3}
    with pytest.raises(ParameterError, match=r"'rows_per_pass' = 3 does not divide the 8 rows.*\[1, 2, 4, 8\]"):
        check_combinations(params, gpu=False)
    for ok in (None, "auto", 1, 4, 8):
        check_combinations({**DEFAULTS, "rows_per_pass": ok}, gpu=False)


def test_auto_on_a_cpu_keeps_the_posts_passes_and_says_why(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    a, differences = arguments.for_this_machine({**DEFAULTS, "rows_per_pass": "auto", "run_dir": str(tmp_path)})
    assert (a.per_device_train_batch_size, a.gradient_accumulation_steps) == (2, 4)
    (why,) = [d for d in differences if d[0] == "rows a pass x passes a step"]
    assert why[2] == "2 x 4 (the post's)" and "no GPU" in why[3]


def llama_8b():
    from types import SimpleNamespace

    return SimpleNamespace(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                           num_hidden_layers=32, vocab_size=128256)


@pytest.mark.parametrize("free_gib, checkpointing, backend, rows", [
    (130, False, "hf", 4),          # an H200 through transformers: 8 rows of 2048 (~150 GiB) do not fit, 4 do
    (130, False, "unsloth", 8),     # unsloth keeps about half of that (measured 38.5 GiB for 4): 8 fit
    (60, False, "unsloth", 4),
    (130, "unsloth", "unsloth", 8),  # with unsloth's offloaded checkpointing all 8 rows fit one pass
    (9, "unsloth", "unsloth", 8),   # a 16 GB card (9 GiB free beside the 8B weights in 4-bit): all 8 too
    (6, "unsloth", "unsloth", 4),   # less free: 4 rows of 2048 a pass
    (3, "unsloth", "unsloth", 2),   # too little for more than the post's 2
    (9, False, "unsloth", 2),       # without checkpointing not even the post's pass fits: it stays the post's
])
def test_auto_takes_the_largest_pass_that_fits(free_gib, checkpointing, backend, rows):
    got, why = memory.choose_rows_per_pass("auto", llama_8b(), 8, 2, 2048, checkpointing,
                                           free_bytes=free_gib * GIB, backend=backend)
    assert got == rows, why
    need = memory.pass_bytes(llama_8b(), rows * 2048, checkpointing, backend) * memory.SAFETY
    if rows > 2:
        assert need < free_gib * GIB and f"{rows} rows" in why
    if rows < 8:
        bigger = memory.pass_bytes(llama_8b(), 2 * rows * 2048, checkpointing, backend) * memory.SAFETY
        assert bigger >= free_gib * GIB  # the next divisor up would not have fit


def test_explicit_rows_per_pass_is_taken_as_asked():
    assert memory.choose_rows_per_pass(None, None, 8, 2, 2048, False) == (2, None)
    assert memory.choose_rows_per_pass(8, None, 8, 2, 2048, False)[0] == 8
