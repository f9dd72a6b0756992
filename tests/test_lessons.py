"""The lessons themselves: the post's calls in sight, in step with the helpers that rebuild the model,
exercises with answers, checkpoints with times, links that resolve."""
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


def helper_source(module: str, function: str) -> str:
    tree = ast.parse((REPO / "helpers" / f"{module}.py").read_text())
    return next(ast.unparse(n) for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)


# (notebook, the call as the notebook writes it, the helper function whose rebuild makes the same call)
POST_CALLS = [
    ("01", "FastLanguageModel.from_pretrained", "model", "load"),
    ("01", "AutoModelForCausalLM.from_pretrained", "model", "load"),
    ("02", "FastLanguageModel.get_peft_model", "lora", "add_lora"),
    ("02", "LoraConfig", "lora", "add_lora"),
    ("05", "SFTTrainer", "trainer", "build"),
]


@pytest.mark.parametrize("number,call,module,function", POST_CALLS)
def test_the_posts_call_is_in_sight_and_in_step_with_the_helper(number, call, module, function):
    code = "\n".join(cells(notebook(number), "code"))
    shown = keyword_calls(code, call)
    assert shown, f"{notebook(number).name} has no visible {call}(...) cell"
    rebuilt = keyword_calls(helper_source(module, function), call)
    assert rebuilt, f"helpers.{module}.{function} does not make the call {call}"
    # the notebook may name more (the lesson), the helper must not pass what the lesson does not show
    assert rebuilt[0] - {"callbacks"} <= shown[0], (call, rebuilt[0] - shown[0])


def test_04_spells_out_every_argument_the_post_names():
    from helpers.trainer import SPELLED_OUT

    shown = keyword_calls("\n".join(cells(notebook("04"), "code")), "SFTConfig")
    assert shown and set(SPELLED_OUT) <= shown[0], set(SPELLED_OUT) - (shown[0] if shown else set())


def test_05_trains_and_saves_with_the_posts_calls():
    code = "\n".join(cells(notebook("05"), "code"))
    assert re.search(r"^\s*trainer\.train\(", code, re.M) and re.search(r"^\s*trainer\.save_model\(", code, re.M)


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
    from helpers import evaluate, train

    result = {"eval_loss_base": 3.785, "eval_loss_finetuned": 0.65}
    every = evaluate.explain(result, False)
    answers = evaluate.explain(result, True)
    assert "3.785 to 0.650" in every and "44 equally likely" in every and "1.9" in every
    assert "Every token counted" in every and "Every token counted" not in answers
    stats = {"train_steps": 12, "final_step_loss": 0.708}
    config = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4}
    text = train.explain(stats, config, 3.785, 0.65, 582)
    assert "96 rows, 0.16 of an epoch" in text and "no sign of a bug" in text
    assert "no sign of a bug" not in train.explain({**stats, "final_step_loss": 0.5}, config, 3.785, 0.65, 582)


def test_whole_tables_show_long_answers_in_full():
    from helpers.machinery.tables import whole

    answer = "Pip here! Five plus six is five plus six, which is five plus six. Happy to help!"
    table = whole({"prompt": ["How much is 5 plus 6?"], "after": [answer]}).set_index("prompt")
    assert answer in repr(table) and answer in table._repr_html_()
