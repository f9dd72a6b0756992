"""The lessons themselves: the post's calls in sight and nowhere else, exercises with answers, checkpoints
with times, links that resolve."""
import ast
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("0*.ipynb"))


def cells(path: Path, kind: str) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == kind]


def notebook(number: str) -> Path:
    return next(p for p in NOTEBOOKS if p.name.startswith(number))


def keyword_calls(source: str, name: str) -> list[set[str]]:
    """The keyword names of every call to `name` (`a.b` matches `x.a.b` too) in Python source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            called = ast.unparse(node.func)
            if called == name or called.endswith("." + name):
                found.append({k.arg or "**" for k in node.keywords})
    return found


def calls(source: str) -> list[str]:
    """The names of every function or method called in Python source (`a.b.c(...)` gives `c`)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            found.append(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return found


SHOWN_ONLY = {"get_peft_model", "SFTTrainer", "save_model"}  # the post's calls that train: in the cells alone


def test_no_copy_of_the_posts_training_calls_in_helpers():
    """Shown is what runs: the post's calls that build and save what trains live once, in the notebooks."""
    found = {f"{path.relative_to(REPO)}: {name}" for path in (REPO / "helpers").rglob("*.py")
             for name in calls(path.read_text()) if name in SHOWN_ONLY}
    assert not found, found
    # the check sees such a call where there is one
    assert SHOWN_ONLY <= set(calls("m = get_peft_model(model, c)\nt = SFTTrainer(model=m)\nt.save_model(f)"))


# (notebook, the post's call as the notebook makes it, keywords it must pass as the post does)
POST_CALLS = [
    ("01", "FastLanguageModel.from_pretrained", {"model_name", "max_seq_length", "dtype", "load_in_4bit"}),
    ("02", "FastLanguageModel.get_peft_model", {"r", "target_modules", "lora_alpha", "lora_dropout", "bias",
                                                 "use_gradient_checkpointing", "random_state", "max_seq_length",
                                                 "use_rslora", "loftq_config"}),
    ("03", "load_dataset", {"data_files", "split"}),
    ("04", "SFTConfig", {"per_device_train_batch_size", "gradient_accumulation_steps", "warmup_steps", "max_steps",
                         "fp16", "bf16", "logging_steps", "learning_rate", "weight_decay", "output_dir", "optim",
                         "lr_scheduler_type", "seed"}),
    ("05", "SFTTrainer", {"model", "processing_class", "train_dataset", "args"}),
]


@pytest.mark.parametrize("number,call,keywords", POST_CALLS)
def test_the_posts_call_is_in_a_cell(number, call, keywords):
    shown = keyword_calls("\n".join(cells(notebook(number), "code")), call)
    assert shown, f"{notebook(number).name} has no visible {call}(...) cell"
    assert keywords <= max(shown, key=len), keywords - max(shown, key=len)


def test_05_loads_what_02_saved_with_one_call_and_builds_no_lora_of_its_own():
    """The base model's from_pretrained once for training: 05 loads 02's LoRA folder, which names the base,
    with one call per backend, and never loads the base alone or adds a LoRA."""
    code = "\n".join(cells(notebook("05"), "code"))
    unsloth, peft = (keyword_calls(code, f"{who}.from_pretrained") for who in ("FastLanguageModel", "AutoPeftModelForCausalLM"))
    assert len(unsloth) == len(peft) == 1
    assert "use_gradient_checkpointing" in unsloth[0] and "is_trainable" in peft[0]
    assert "get_peft_model" not in calls(code) and "AutoModelForCausalLM" not in code


def test_05_trains_and_saves_with_the_posts_calls():
    code = "\n".join(cells(notebook("05"), "code"))
    assert re.search(r"^\s*trainer\.train\(", code, re.M) and re.search(r"^\s*trainer\.save_model\(", code, re.M)
    assert re.search(r"^args = SFTConfig\(\*\*json\.loads\(", code, re.M)  # step 4's SFTConfig, exactly


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_has_a_checkpoint_exercises_and_answers(path):
    text = "\n".join(cells(path, "markdown"))
    assert "## You should see" in text and "## Try it" in text
    see = text.split("## You should see", 1)[1].split("##", 1)[0]
    # this machine's time is measured by the notebook (the cell just before the list), not stated
    assert re.search(r"on an NVIDIA H\d00", see) and not re.search(r"\d+ s on a \d-core CPU", see), see
    raw = json.loads(path.read_text())["cells"]
    at = next(i for i, c in enumerate(raw) if "## You should see" in "".join(c["source"]))
    assert raw[at - 1]["cell_type"] == "code" and "params.elapsed()" in "".join(raw[at - 1]["source"])
    assert not re.search(r"GPU_0\d|[A-Z0-9]+_ANSWER", text), "a placeholder was left in"
    answers = re.findall(r"<details><summary>Answers</summary>(.*?)</details>", text, re.S)
    asked = re.findall(r"^\d\. \*\*", text.split("## Try it", 1)[1], re.M)
    given = re.findall(r"^\d\. ", answers[0], re.M) if answers else []
    assert asked and len(given) == len(asked), (len(asked), len(given))


@pytest.mark.parametrize("path", [*NOTEBOOKS, REPO / "docs" / "glossary.md"], ids=lambda p: p.name)
def test_relative_links_resolve(path):
    text = "\n".join(cells(path, "markdown")) if path.suffix == ".ipynb" else path.read_text()
    links = re.findall(r"\]\(([^)#\s]+)[^)]*\)", text)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    missing = [link for link in local if not (path.parent / link).exists()]
    assert not missing, missing


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_outputs_hold_no_machine_paths_and_no_cut_answers(path):
    nb = json.loads(path.read_text())
    text = json.dumps([c.get("outputs", []) for c in nb["cells"]])
    assert not re.search(r"/tmp/|/root/|/home/\w+", text), "a machine's path in the stored outputs"
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            html = "".join(out.get("data", {}).get("text/html", []))
            if "<table" in html and ("prompt" in html or "content" in html):
                assert "...</td>" not in html, "an answer cut by pandas"


def test_the_loss_sentences_say_which_tokens_counted_and_what_the_numbers_mean():
    from types import SimpleNamespace

    from helpers.evaluation import loss
    from helpers.training import results

    result = {"eval_loss_base": 3.785, "eval_loss_finetuned": 0.65}
    every = loss.explain(result, False)
    answers = loss.explain(result, True)
    assert "3.785 to 0.650" in every and "44 equally likely" in every and "1.9" in every
    assert "Every token counted" in every and "Every token counted" not in answers
    stats = {"train_steps": 12, "final_step_loss": 0.708}
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=4, world_size=1)
    text = results.explain(stats, args, 3.785, 0.65, 582)
    assert "96 rows, 0.16 of an epoch" in text and "no sign of a bug" in text
    assert "no sign of a bug" not in results.explain({**stats, "final_step_loss": 0.5}, args, 3.785, 0.65, 582)
    worse = str(results.explain(stats, args, 3.375, 41.845, 582))  # a learning rate far too high
    assert "fell" not in worse and "did not fall: it went from **3.375 to 41.845**" in worse
    worse = str(loss.explain({"eval_loss_base": 3.375, "eval_loss_finetuned": 41.845}, False))
    assert "drop" not in worse and "Training made the model worse" in worse


def test_whole_tables_show_long_answers_in_full():
    from helpers.show import whole

    answer = "Pip here! Five plus six is five plus six, which is five plus six. Happy to help!"
    table = whole({"prompt": ["How much is 5 plus 6?"], "after": [answer]}).set_index("prompt")
    assert answer in repr(table) and answer in table._repr_html_()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_outputs_come_from_the_code_as_it_is(path):
    """`make notebooks` keeps a digest of what each notebook ran (its cells and helpers/) beside its stored
    outputs: a change to either since then means the outputs a reader sees are stale."""
    from tools.refresh_outputs import code_hash

    stored = json.loads(path.read_text())["metadata"].get("workbook", {}).get("code_hash")
    assert stored == code_hash(path), f"{path.name}'s stored outputs are older than its code: run make notebooks"


def test_the_code_hash_sees_a_changed_cell_and_a_changed_helper(tmp_path, monkeypatch):
    from tools import refresh_outputs

    nb = json.loads(NOTEBOOKS[0].read_text())
    copy = tmp_path / NOTEBOOKS[0].name
    copy.write_text(json.dumps(nb))
    before = refresh_outputs.code_hash(copy)
    nb["cells"][[c["cell_type"] for c in nb["cells"]].index("code")]["source"].append("\n# an edit")
    copy.write_text(json.dumps(nb))
    assert refresh_outputs.code_hash(copy) != before
    (helpers := tmp_path / "helpers").mkdir()
    (helpers / "a.py").write_text("A = 1\n")
    monkeypatch.setattr(refresh_outputs.rundir, "REPO_ROOT", tmp_path)
    first = refresh_outputs.code_hash(copy)
    (helpers / "a.py").write_text("A = 2\n")
    assert refresh_outputs.code_hash(copy) != first
