import ast
import json
import re
from pathlib import Path

import nbformat
import pytest

from helpers import params
from tools import param_docs
from helpers.params import DEFAULTS, ParameterError
from tools.config import load as load_config

REPO = Path(__file__).resolve().parent.parent


def test_settle_merges_defaults_saved_and_own(tmp_path):
    run = tmp_path / "run"
    first = params.settle(run, {"model_name": "some/model", "__name__": "x"})
    assert first["model_name"] == "some/model"
    assert first["lora_r"] == DEFAULTS["lora_r"]
    second = params.settle(run, {"lora_r": 8})
    assert second["model_name"] == "some/model"  # picked up from the run folder
    assert second["lora_r"] == 8
    # papermill injects a whole config into every notebook: injected values beat saved ones
    third = params.settle(run, {"num_eval_prompts": 1, "model_name": "other/model"})
    assert third["model_name"] == "other/model" and third["lora_r"] == 8
    saved = json.loads((run / "params.json").read_text())
    assert saved["lora_r"] == 8 and saved["run_dir"] == str(run)


def test_unknown_name_suggests_closest():
    with pytest.raises(ParameterError, match="Unknown parameter 'lora_rank'.*Did you mean 'lora_r'"):
        params.check({"lora_rank": 8})


@pytest.mark.parametrize("name, value, message", [
    ("lora_r", "16", "has type str; expected int"),
    ("lora_r", 0, "below its minimum 1"),
    ("learning_rate", -1.0, "below its minimum"),
    ("eval_fraction", 0.9, "above its maximum 0.5"),
    ("per_device_train_batch_size", 1.5, "expected int"),
    ("load_in_4bit", 1, "expected bool"),
    ("backend", "cuda", "expected one of 'auto', 'unsloth', 'hf'"),
    ("use_gradient_checkpointing", 1, "not allowed"),
    ("target_modules", [], "non-empty list"),
    ("max_rows", 0, "expected None or a whole number"),
    ("learning_rate", float("nan"), "not a finite number"),  # YAML's .nan: was stored as null, failed in 05
    ("learning_rate", float("inf"), "not a finite number"),  # -p learning_rate 1e999
    ("lora_dropout", float("nan"), "not a finite number"),
    ("weight_decay", float("inf"), "not a finite number"),
])
def test_bad_values_name_parameter_value_and_rule(name, value, message):
    with pytest.raises(ParameterError, match=re.escape(f"'{name}' = {value!r}")) as e:
        params.check({name: value})
    assert message in str(e.value)


def test_int_accepted_for_float_parameter():
    params.check({"learning_rate": 1, "use_gradient_checkpointing": True, "dtype": None})


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(ParameterError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ParameterError, match=f"{bad}.*must be a mapping"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("learning_rat: 0.1\n")
    with pytest.raises(ParameterError, match=f"{typo}.*Did you mean 'learning_rate'"):
        load_config(typo)


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(config):
    assert load_config(config)


def _parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    values = {}
    for node in ast.parse(cells[0].source).body:
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


@pytest.mark.parametrize("step, name", sorted(params.STEPS.items()))
def test_notebook_parameters_match_the_table(step, name):
    """Each notebook's parameters cell holds exactly its step's parameters with the table's defaults."""
    values = _parameters_cell(REPO / "notebooks" / f"{name}.ipynb")
    assert values == {n: DEFAULTS[n] for n in params.owned_by(step) + ["run_dir"]}


def test_default_config_matches_notebook_defaults():
    config = load_config(REPO / "configs" / "default.yaml")
    assert {k: DEFAULTS[k] for k in config} == config


def test_parameter_document_is_current():
    text = param_docs.DOC.read_text()
    assert param_docs.document(text) == text, "docs/parameters.md is out of date: run python -m tools.param_docs"
    assert param_docs.markdown_table() in text and "`report_to`" in text


def test_parameter_document_is_rewritten_between_its_markers(tmp_path, monkeypatch):
    stale = f"intro\n{param_docs.TABLE_START}\n| old | table |\n{param_docs.TABLE_END}\nafter\n"
    monkeypatch.setattr(param_docs, "DOC", tmp_path / "parameters.md")
    param_docs.DOC.write_text(stale)
    assert param_docs.main(["--check"]) == 1
    assert param_docs.main([]) == 0 and param_docs.main(["--check"]) == 0
    text = param_docs.DOC.read_text()
    assert text.startswith("intro\n") and text.endswith("after\n") and "| old |" not in text
    assert param_docs.markdown_table() in text
    param_docs.DOC.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        param_docs.main([])


# Calls that get the whole parameter dict: they check a step's parameters together and choose this
# machine's values from them (for_this_machine, checkpointing), or keep the run's record (the data report,
# the split's meta, the training's resume point). Every other helper call in a notebook names the values
# it uses.
TAKE_THE_RUN = {"params.settle", "lora.for_this_machine", "lora.checkpointing", "arguments.for_this_machine",
                "reports.Report.start", "split.save", "loop.measured"}


def calls_given_the_whole_dict(code: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call) and any(isinstance(v, ast.Name) and v.id == "P"
                                              for v in [*node.args, *(k.value for k in node.keywords)]):
            found.add(ast.unparse(node.func))
    return found


def test_notebooks_pass_step_functions_the_values_they_use():
    for nb in sorted((REPO / "notebooks").glob("0*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
        whole = calls_given_the_whole_dict(code) - TAKE_THE_RUN
        assert not whole, f"{nb.name} passes the whole parameter dict P to {sorted(whole)}: name the values"


def test_the_whole_dict_rule_sees_a_call_that_takes_p():
    assert calls_given_the_whole_dict("prepared = data.prepare(P, tokenizer)") == {"data.prepare"}
    assert calls_given_the_whole_dict("x = f(tok, run_dir=P['run_dir'])") == set()


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    config = tmp_path / "twice.yaml"
    config.write_text("max_steps: 3\nlearning_rate: 0.001\nmax_steps: 5\n")
    with pytest.raises(ParameterError, match=rf"{config}, line 3: 'max_steps' is given twice \(lines 1 and 3\)"):
        load_config(config)


def test_a_config_that_is_not_utf8_names_the_line_and_the_likely_encoding(tmp_path):
    config = tmp_path / "excel.yaml"
    config.write_bytes(b"max_steps: 3\nsystem_message: 'Pip, caf\xe9 owner'\n")
    with pytest.raises(ParameterError, match=rf"{config}, line 2: byte 0xe9 is not UTF-8; it reads as "
                                             r"Windows-1252 \(.*café owner.*\): convert the file with iconv"):
        load_config(config)
    with pytest.raises(ParameterError, match="is a folder"):
        load_config(tmp_path)
