"""Step 5's held-out loss while training, early stopping and the best adapter, through 05's own cells
(`python -m tools.train`): on a run that overfits (30 of the default data's rows, trained over 2.7 times
at 3e-3), early stopping stops it and keeps the best evaluation's adapter; without it the last adapter is
kept, and it is worse. Each adapter's loss is measured again here from `adapter/` on disk."""
import json
import subprocess
import sys

import pytest

from helpers import rundir
from helpers.training import evaluating

REPO = rundir.REPO_ROOT
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def overfitting(tmp_path_factory, training_config):
    """Runs the overfitting config with `changes`; returns (metrics.json, run folder)."""
    folder = tmp_path_factory.mktemp("overfit")

    def run(name, **changes):
        config = training_config(folder / f"{name}.yaml", max_rows=40, eval_fraction=0.25, max_steps=40,
                                 learning_rate=3e-3, save_steps=50, eval_steps=2, **changes)
        run_dir = folder / name
        done = subprocess.run([sys.executable, "-m", "tools.train", str(config), "--run-dir", str(run_dir)],
                              cwd=REPO, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr
        return json.loads((run_dir / "metrics.json").read_text()), run_dir, done.stdout

    return run


def saved_adapter_loss(run_dir) -> float:
    """The held-out loss of `run_dir/adapter`, loaded from disk onto its base model."""
    from peft import AutoPeftModelForCausalLM

    from helpers.data import split
    from helpers.evaluation import loss
    from helpers.model import loading

    model = AutoPeftModelForCausalLM.from_pretrained(run_dir / "adapter", **loading.base(run_dir).arguments)
    _, held_out = split.load(run_dir)
    return loss.held_out_loss(model, held_out, 200, 8)


def test_early_stopping_keeps_the_best_adapter_and_training_on_keeps_a_worse_one(overfitting):
    stopped, stopped_dir, said = overfitting("early", early_stopping_patience=3)
    best_step, best = evaluating.best_of([tuple(e) for e in stopped["eval_history"]])
    assert stopped["stopped_early_at"] == stopped["train_steps"] < 40
    assert [s for s, _ in stopped["eval_history"]] == list(range(2, stopped["train_steps"] + 1, 2))
    assert stopped["eval_history"][-1][0] - best_step == 3 * 2  # three evaluations without improvement
    assert stopped["adapter_step"] == best_step < stopped["train_steps"]
    assert stopped["best_eval_loss"] == best
    assert f"Keeping the adapter of step {best_step}" in said
    assert abs(stopped["eval_loss_finetuned"] - best) < 1e-6  # 05's figure after training is the best's
    assert abs(saved_adapter_loss(stopped_dir) - best) < 1e-6  # and so is the adapter on disk

    last, last_dir, _ = overfitting("last")
    assert last["stopped_early_at"] is None and last["train_steps"] == last["adapter_step"] == 40
    assert abs(saved_adapter_loss(last_dir) - last["eval_history"][-1][1]) < 1e-6
    assert all(abs(a[1] - b[1]) < 1e-6 for a, b in zip(last["eval_history"], stopped["eval_history"]))  # same until then
    assert last["eval_loss_finetuned"] > best + 0.01  # training on made it worse


def test_load_best_model_at_end_without_early_stopping_keeps_the_best_of_the_whole_run(overfitting):
    kept, kept_dir, _ = overfitting("best", load_best_model_at_end=True)
    best_step, best = evaluating.best_of([tuple(e) for e in kept["eval_history"]])
    assert kept["train_steps"] == 40 and kept["stopped_early_at"] is None
    assert kept["adapter_step"] == best_step < 40
    assert abs(saved_adapter_loss(kept_dir) - best) < 1e-6
