"""Step 5's held-out loss while it trains: every `eval_steps` optimizer steps, the same token-weighted
figure 05 shows before and after training (helpers.evaluation.loss.mean_token_loss), logged in the
trainer's log history as `eval_loss`, so TensorBoard or wandb (`report_to`) show it too; early stopping
after `early_stopping_patience` evaluations without improvement; and the best adapter kept.

    held_out_eval = evaluating.HeldOutLoss(trainer, held_out, eval_steps=P["eval_steps"], ...)
    trainer.add_callback(held_out_eval)

What it decides it reads back from the trainer's state (`log_history`, `best_global_step`), which every
checkpoint saves, so a resumed training decides as the uninterrupted one would. The best adapter is the
checkpoint saved at the best evaluation's step, which the trainer's own rotation keeps (as with its
`load_best_model_at_end`); when training ends its LoRA weights are loaded back into the model, so 05's
`trainer.save_model` saves them. `kept_loss` is then the held-out loss of the weights in the model, as
measured at their step: 05 reports it rather than spending another evaluation on the same weights.
"""
from __future__ import annotations

import math
from pathlib import Path

from transformers import TrainerCallback

from helpers.errors import ParameterError
from helpers.evaluation.loss import eval_rows, mean_token_loss


def every(eval_steps, max_steps: int) -> int:
    """Steps between evaluations: `eval_steps`, or for None three evaluations in the run (on a CPU each
    costs about what a training step of the default does, so more would slow the default run by more
    than a tenth)."""
    return math.ceil(max_steps / 3) if eval_steps is None else int(eval_steps)


def evaluations(log_history) -> list[tuple[int, float]]:
    """(step, held-out loss) of every evaluation during training, oldest first."""
    return [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]


def best_of(done: list[tuple[int, float]]) -> tuple[int, float]:
    """The evaluation with the lowest loss; of equal ones the earliest (improving means going lower)."""
    return min(done, key=lambda e: e[1])


class HeldOutLoss(TrainerCallback):
    """Evaluates at every `eval_steps`-th step and at the last; with `early_stopping_patience` N > 0 stops
    after N evaluations that did not beat the best one; with early stopping or `load_best_model_at_end`,
    ends with the best evaluation's LoRA weights in the model (`adapter_step` says which)."""

    def __init__(self, trainer, held_out, *, eval_steps, max_eval_rows: int, early_stopping_patience: int,
                 load_best_model_at_end: bool):
        from helpers.data.split import for_training

        self.trainer, args = trainer, trainer.args
        self.every = every(eval_steps, args.max_steps)
        self.patience = early_stopping_patience
        self.keep_best = bool(load_best_model_at_end or self.patience)
        self.rows = for_training(eval_rows(held_out, max_eval_rows), None) if len(held_out) else None
        wants = "early_stopping_patience" if self.patience else "load_best_model_at_end"
        if self.keep_best and (self.rows is None or not self.every):
            raise ParameterError(f"Parameter '{wants}' needs evaluations during training: eval_steps > 0 (it is "
                                 f"{eval_steps}) and held-out rows (eval_fraction > 0 in 03).")
        if self.keep_best and args.save_strategy == "no":
            raise ParameterError(f"Parameter '{wants}' keeps the best step's checkpoint, but 04's SFTConfig "
                                 f"saves none (save_strategy 'no').")
        self.stopped_at = None
        self.adapter_step = self.kept_loss = None  # when training ends: the step kept, its held-out loss

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if self.rows is None or not self.every or (step % self.every and step < state.max_steps):
            return control
        logs = {"eval_loss": mean_token_loss(self.trainer.model, self.rows, args.per_device_eval_batch_size)}
        # what Trainer.log does; TRL's log would fold the training metrics it collects into this entry
        state.log_history.append({**logs, "step": step})
        should_log = control.should_log  # the handler clears it, and this step's training loss is still to log
        control = self.trainer.callback_handler.on_log(args, state, control, logs)
        control.should_log = should_log
        done = evaluations(state.log_history)
        best_step, best = best_of(done)
        if self.keep_best and best_step == step:
            state.best_metric, state.best_global_step = best, step
            control.should_save = True  # the trainer keeps the best step's checkpoint from deletion
        if self.patience and sum(s > best_step for s, _ in done) >= self.patience:
            control.should_training_stop = True
            self.stopped_at = step
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.adapter_step = state.global_step
        self.kept_loss = dict(evaluations(state.log_history)).get(state.global_step)
        if not (self.keep_best and state.best_global_step) or (state.global_step < state.max_steps and not self.stopped_at):
            return control  # nothing kept, or stopped by a signal: the run continues later
        best, done = state.best_global_step, evaluations(state.log_history)
        if best != state.global_step:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            weights = Path(args.output_dir) / f"checkpoint-{best}" / "adapter_model.safetensors"
            if not weights.is_file():
                raise FileNotFoundError(f"The best evaluation's checkpoint is gone: {weights} (step {best}).")
            set_peft_model_state_dict(self.trainer.model, load_file(weights))
            self.adapter_step, self.kept_loss = best, state.best_metric
        if self.trainer.is_world_process_zero():
            stopped = (f"Stopped early at step {self.stopped_at}: {self.patience} evaluations without improvement. "
                       if self.stopped_at else "")
            print(f"{stopped}Keeping the adapter of step {best}, the best of {len(done)} evaluations "
                  f"(held-out loss {state.best_metric:.4f}; the last, step {done[-1][0]}: {done[-1][1]:.4f}).")
        return control

    def summary(self) -> dict:
        """For metrics.json: how often it evaluated, where training stopped, which step's adapter was kept."""
        done = evaluations(self.trainer.state.log_history)
        return {"eval_steps": self.every, "eval_history": [list(e) for e in done],
                "stopped_early_at": self.stopped_at, "adapter_step": self.adapter_step,
                "best_eval_loss": best_of(done)[1] if done else None}
