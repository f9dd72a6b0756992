"""What the runner (and tools.train) refuses before any notebook runs, beside the parameter checks
(tools.preflight): a change that would not reach training, a training that would be continued with other
inputs; and what it fixes first: paths given relative to where the command started."""
from __future__ import annotations

from pathlib import Path

from helpers import params, rundir
from helpers.training import checkpoints


def from_here(values: dict) -> dict:
    """`dataset` or `model_name` given as a path relative to where the command was started, made absolute:
    the kernels run in notebooks/, and look there and in the repository root."""
    here = Path.cwd()
    for name in ("dataset", "model_name"):
        value = values.get(name)
        if isinstance(value, str) and here != rundir.REPO_ROOT and not Path(value).expanduser().is_absolute() \
                and (here / value).exists():
            values[name] = str((here / value).resolve())
    return values


# Parameters of steps 1-4 that their results in the run folder do not depend on: step 5 applies them itself.
APPLIED_IN_05 = {"use_gradient_checkpointing"}


def refuse_changes_not_run(saved: dict, merged: dict, chosen: list[Path]) -> None:
    """A parameter of steps 1-4 that differs from the run folder's, where its step does not run: what that
    step left in the run folder (the model's record, the LoRA, the rows, the SFTConfig) was built with
    the old value, and step 5 trains what it finds there, so the change would not reach training."""
    run = {nb.name[:2] for nb in chosen}
    changed = [name for name, value in merged.items() if name in saved and saved[name] != value
               and params.BY_NAME[name].step in ("01", "02", "03", "04") and params.BY_NAME[name].step not in run
               and name not in APPLIED_IN_05 and name != "run_dir"]
    if changed:
        steps = sorted({params.BY_NAME[name].step for name in changed})
        listed = ", ".join(f"{name} ({saved[name]!r} in the run folder, {merged[name]!r} now; {params.STEPS[params.BY_NAME[name].step]})"
                           for name in changed)
        raise params.ParameterError(f"{listed}: the run folder's results of those steps were made with the old value, and "
                               f"the notebooks after them use those results, so the change would not reach training. "
                               f"Run {' and '.join(params.STEPS[s] for s in steps)} too (--only {' --only '.join(steps)}), "
                               f"or use another --run-dir.")


def refuse_mixing_trainings(run_dir: Path, merged: dict, chosen: list[Path]) -> None:
    """Where 05 would continue the run folder's training (resume 'auto' or True over an unfinished one, True
    over a finished one), the inputs must be those it started with: else 01-04 would rewrite their results
    and 05 then refuse (checkpoints.resume_from). Checked before anything runs or is written."""
    folder = checkpoints.folder(run_dir)
    record = rundir.read_json(folder / "run.json", default=None)
    if "05" not in {nb.name[:2] for nb in chosen} or merged["resume"] is False or not record or not checkpoints.complete(folder):
        return
    newest = checkpoints.complete(folder)[-1].name
    if record.get("finished"):
        if merged["resume"] is True:
            raise params.ParameterError(f"Parameter 'resume' = True, but the training in {folder} finished ({newest}): "
                                        f"there is nothing to continue. {checkpoints.FRESH}")
        return
    saved = rundir.read_json(run_dir / "params.json", default={})  # what the steps before the checkpoint ran with
    changed = [f"{k}: {saved[k]!r} -> {merged.get(k)!r}" for k in saved if k in params.BY_NAME and k != "dataset"
               and params.BY_NAME[k].step in ("01", "02", "03", "04") and merged.get(k) != saved[k]]
    was, now = rundir.find_file(saved.get("dataset", "")), rundir.find_file(merged["dataset"])
    if was != now:
        changed.append(f"dataset: {saved.get('dataset')!r} -> {merged['dataset']!r}")
    elif now is not None and record.get("dataset file") and not same_file(record["dataset file"], now):
        changed.append(f"the content of the dataset file {now}")
    if changed:
        raise params.ParameterError(f"Parameter 'resume' = {merged['resume']!r}: {folder} holds an unfinished training "
                                    f"({newest}) of other inputs, and continuing it would mix two trainings. "
                                    f"Changed: {'; '.join(changed)}. {checkpoints.FRESH}")


def same_file(recorded: dict, path: Path) -> bool:
    """Whether `path` holds what `fingerprint` recorded (read again only where its size or time differ)."""
    stat = path.stat()
    if (stat.st_size, stat.st_mtime_ns) == (recorded["size"], recorded["mtime_ns"]):
        return True
    return stat.st_size == recorded["size"] and checkpoints.digest(path) == recorded["digest"]
