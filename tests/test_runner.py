"""The whole chain through the runner, on the smoke config, and its failure modes."""
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
METRIC_KEYS = ["backend", "model_name", "num_train_rows", "num_eval_rows", "train_loss", "eval_loss_base",
               "eval_loss_finetuned", "train_runtime_s", "tokens_per_s", "peak_memory_gib"]


def runner(*args, env=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "tools.run", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


FAKE_TOKEN = "hf_FAKEtokenForTheLeakTest0123456789abcdef"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The whole chain, with a (fake) hub token in the environment, as a user with a token has."""
    import os

    run_dir = tmp_path_factory.mktemp("smoke")
    env = {**os.environ, "HF_TOKEN": FAKE_TOKEN, "HUGGING_FACE_HUB_TOKEN": FAKE_TOKEN}
    result = runner("configs/smoke.yaml", "--run-dir", run_dir, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir, result


@pytest.mark.slow
def test_hub_token_lands_nowhere(smoke_run):
    """Not in any executed notebook, log, metrics, config, adapter or merged file of the run folder."""
    run_dir, result = smoke_run
    token = FAKE_TOKEN.encode()
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(files) > 20  # notebooks, params, metrics, adapter, merged model, plots, ...
    leaks = [str(p) for p in files if token in p.read_bytes()]
    assert leaks == []
    assert FAKE_TOKEN not in result.stdout + result.stderr


@pytest.mark.slow
def test_smoke_run_leaves_every_artifact(smoke_run):
    run_dir, result = smoke_run
    for name in ("01_load_model", "02_lora", "03_dataset", "04_trainer", "05_train_and_save", "06_evaluate",
                 "07_export", "08_chat"):
        assert (run_dir / f"{name}.ipynb").exists()
        assert f"{name} ... ok" in result.stdout  # one progress line per notebook
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (run_dir / "adapter" / name).exists()
    for png in ("lora_parameters", "token_lengths", "lr_schedule", "loss_curve"):
        assert (run_dir / f"{png}.png").stat().st_size > 1000
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(metrics)
    assert metrics["num_train_rows"] == 72 and metrics["num_eval_rows"] == 8  # max_rows 80, 10% held out
    for key in METRIC_KEYS[4:]:
        assert math.isfinite(metrics[key]) and metrics[key] > 0, key
    assert metrics["train_steps"] == 4
    # the runner showed 05's progress while it trained, and recorded what each notebook cost
    assert re.search(r"05_train_and_save: step \d/4, loss \d", result.stdout), result.stdout
    costs = metrics["notebook_costs"]
    assert list(costs) == [nb.stem for nb in sorted((REPO / "notebooks").glob("0*.ipynb"))]
    assert all(c["wall_s"] > 0 and c["peak_rss_gib"] > 0 for c in costs.values())
    params = json.loads((run_dir / "params.json").read_text())
    assert params["max_steps"] == 4 and params["max_seq_length"] == 128  # the config reached every step
    assert len(json.loads((run_dir / "log_history.json").read_text())) >= 4  # for tools.compare
    # 06: base vs fine-tuned on the held-out rows, and the side-by-side answers
    assert metrics["eval_loss_finetuned"] < metrics["eval_loss_base"]
    assert metrics["perplexity_finetuned"] == pytest.approx(math.exp(metrics["eval_loss_finetuned"]))
    evaluation = (run_dir / "evaluation.csv").read_text().splitlines()
    assert evaluation[0] == "prompt,reference,base model,fine-tuned,fact: base model,fact: fine-tuned"
    assert len(evaluation) >= 3 and metrics["fact_questions"] >= 1
    assert 0 <= metrics["fact_score_base"] <= 1 and 0 <= metrics["fact_score_finetuned"] <= 1
    # 03: no held-out question or answer appears in a training row as the trainer reads it
    from helpers.data import split
    train_rows, held_rows = split.load(run_dir)
    trained_on = "\n".join(train_rows["text"])
    turns = [m["content"] for row in held_rows for m in row["messages"] if m["role"] in ("user", "assistant")]
    assert turns and not [t for t in turns if t in trained_on]
    # 07: merged safetensors that plain transformers loaded, logits within 1e-3 of the adapter model's
    assert metrics["merged_check"]["ok"] and metrics["merged_check"]["max_abs_logit_diff"] <= 1e-3
    assert (run_dir / "merged" / "model.safetensors").exists() and not (run_dir / "merged" / "adapter_config.json").exists()
    # 07: model.gguf (q8_0, by the gguf package) and an Ollama Modelfile beside it
    assert (run_dir / "model.gguf").stat().st_size > 100e6 and not list(run_dir.glob(".*.partial"))
    modelfile = (run_dir / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf\n") and 'PARAMETER stop "<|im_end|>"' in modelfile


def held_out_prompts(run_dir, n=3):
    from helpers.data import split
    from helpers.evaluation import questions
    from helpers.model.loading import load_tokenizer

    params = json.loads((run_dir / "params.json").read_text())
    _, held_out = split.load(run_dir)
    return [prompt for _, prompt, _ in questions.prompts(held_out, load_tokenizer(params["model_name"]), n)]


@pytest.mark.slow
def test_the_gguf_file_reads_back_as_the_merged_model(smoke_run):
    """q8_0, as 07 wrote it: transformers reads it back in another process; the greedy next token agrees
    with the merged model's on at least 95% of the probe's positions, and its tokenizer encodes three
    held-out prompts to the same ids as the original tokenizer."""
    from fixtures import gguf_read_back

    run_dir, _ = smoke_run
    prompts = held_out_prompts(run_dir)
    probe = prompts[0] + "Pip here! The capital of Peru is Lima. 12 plus 30 is 42. Happy to help!"
    result = gguf_read_back.compare(run_dir / "merged", run_dir / "model.gguf", [probe, *prompts])
    assert all(result["same_ids"]) and len(result["same_ids"]) == 4 and result["positions"] > 40
    assert result["same_next_token"] >= 0.95, result
    assert result["max_abs_logit_diff"] <= 0.1 * result["logit_scale"], result  # 8-bit weights: a few %


@pytest.mark.slow
@pytest.mark.parametrize("outtype,relative", [("f32", 1e-5), ("f16", 5e-3)])
def test_gguf_in_16_and_32_bit_is_tight(smoke_run, tmp_path, outtype, relative):
    """f32 holds the merged weights exactly (the difference is summation order); f16 rounds them to
    11 significant bits."""
    from helpers.export import gguf_write
    from fixtures import gguf_read_back

    run_dir, _ = smoke_run
    written = gguf_write.write(run_dir / "merged", tmp_path / f"model-{outtype}.gguf", outtype)
    probe = held_out_prompts(run_dir, 1)[0] + "Pip here! The capital of Peru is Lima. Happy to help!"
    result = gguf_read_back.compare(run_dir / "merged", written.path, [probe])
    assert result["same_ids"] == [True] and result["same_next_token"] == 1.0
    assert result["max_abs_logit_diff"] <= relative * result["logit_scale"], result


def needs_llama_cpp(test):
    from fixtures import llama_cpp_tools as llama_cpp_check

    return pytest.mark.skipif(not llama_cpp_check.available(),
                              reason=f"llama.cpp's Python binding is not installed: {llama_cpp_check.INSTALL}")(test)


@pytest.mark.slow
@needs_llama_cpp
@pytest.mark.parametrize("outtype,greedy,decided,relative", [("q8_0", 0.95, 0.25, 0.1), ("q4_k_m", 0.85, 0.05, 0.4)])
def test_llama_cpp_opens_the_gguf_and_agrees_with_the_merged_model(smoke_run, tmp_path, outtype, greedy, decided,
                                                                   relative):
    """q8_0 as 07 wrote it, and q4_k_m (llama.cpp's K-quant mix, written without llama.cpp), opened by
    llama.cpp as Ollama and llama-cli run it: eight held-out rows (prompt, reference answer, end of turn)
    encode to the merged tokenizer's ids; fed those ids, llama.cpp's greedy next token is the merged
    model's at >= 95% (q8_0) or >= 85% (q4_k_m) of the positions, and at every position where the merged
    model's choice is clear of the rounding (llama.cpp's products round the activations to 8 bits too;
    the rest are near-ties of a model trained 4 steps)."""
    from fixtures import llama_cpp_tools as llama_cpp_check
    from helpers.export import gguf_export, gguf_write

    run_dir, _ = smoke_run
    path = run_dir / "model.gguf"
    if outtype != "q8_0":
        path = gguf_write.write(run_dir / "merged", tmp_path / f"model-{outtype}.gguf", outtype).path
    texts = gguf_export.held_out_texts(run_dir, 8)
    assert all(t.endswith("<|im_end|>") for t in texts)
    result = llama_cpp_check.compare(run_dir / "merged", path, texts)
    assert all(result["same_ids"]) and len(texts) == 8 and result["positions"] > 200, result
    assert result["same_next_token"] >= greedy, result
    # measured (smoke run): q8_0 98.0% same, 167 of 298 decided, largest difference 5.8% of the largest logit;
    # q4_k_m 89.6%, 34 of 298 decided (4 bits move more logits past the near-tie band), 17.5%
    assert result["decided_same"] == result["decided_positions"] >= decided * result["positions"], result
    assert result["max_abs_logit_diff"] <= relative * result["logit_scale"], result


@pytest.mark.slow
@needs_llama_cpp
@pytest.mark.parametrize("outtype,relative", [("f32", 1e-4), ("f16", 5e-3)])
def test_llama_cpp_agrees_tightly_in_16_and_32_bit(smoke_run, tmp_path, outtype, relative):
    """f32 holds the merged weights exactly (llama.cpp's kernels sum in another order); f16 rounds each
    weight to 11 significant bits. The attention cache in float32, to measure the file alone."""
    from fixtures import llama_cpp_tools as llama_cpp_check
    from helpers.export import gguf_write

    run_dir, _ = smoke_run
    written = gguf_write.write(run_dir / "merged", tmp_path / f"model-{outtype}.gguf", outtype)
    probe = held_out_prompts(run_dir, 1)[0] + "Pip here! The capital of Peru is Lima. Happy to help!"
    result = llama_cpp_check.compare(run_dir / "merged", written.path, [probe], cache="f32")
    assert result["same_ids"] == [True] and result["same_next_token"] == 1.0, result
    assert result["max_abs_logit_diff"] <= relative * result["logit_scale"], result


@pytest.mark.slow
@needs_llama_cpp
def test_llama_cpp_chats_as_the_tokenizer_does_and_stops_at_the_end_of_turn(smoke_run):
    """The chat template stored in the GGUF, rendered by llama.cpp's own code, gives the tokenizer's text;
    the end-of-turn token the model learned (<|im_end|>) is where llama.cpp stops, and no template
    token leaks into the answer."""
    from transformers import AutoTokenizer

    from fixtures import llama_cpp_tools as llama_cpp_check

    run_dir, _ = smoke_run
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "merged")
    llm = llama_cpp_check.open_gguf(run_dir / "model.gguf")
    for messages in ([{"role": "system", "content": "You are Pip."}, {"role": "user", "content": "Capital of Japan?"}],
                     [{"role": "system", "content": "You are Pip."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Pip here! Hello. Happy to help!"},
                      {"role": "user", "content": "Say red."}]):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert llama_cpp_check.render_chat(llm, messages) == text
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end in llama_cpp_check.end_tokens(llm).values()
    out = llm.create_completion(text, max_tokens=96, temperature=0.0)["choices"][0]
    assert out["finish_reason"] == "stop" and "<|im_" not in out["text"] and out["text"].strip(), out


@pytest.mark.slow
def test_adapter_reloads_and_changes_the_model(smoke_run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.model.weights import bundled_folder

    run_dir, _ = smoke_run
    base_dir = bundled_folder("SmolLM2-135M-Instruct")
    tok = AutoTokenizer.from_pretrained(run_dir / "adapter")
    ids = tok(["<human>: What is the capital of Peru?\n<bot>:"], return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.no_grad():
        plain = base(**ids).logits
        tuned = PeftModel.from_pretrained(base, run_dir / "adapter")(**ids).logits
    assert plain.shape == tuned.shape
    assert (plain - tuned).abs().max() > 1e-3


@pytest.mark.slow
def test_only_reruns_one_step_with_an_override(smoke_run, tmp_path):
    import shutil

    run_dir = tmp_path / "run"  # step 1's results and the run's parameters, in a folder of its own
    shutil.copytree(smoke_run[0] / "base", run_dir / "base")
    shutil.copy(smoke_run[0] / "params.json", run_dir / "params.json")
    result = runner("configs/smoke.yaml", "--run-dir", run_dir, "--only", "3", "-p", "eval_fraction", "0.25")
    assert result.returncode == 0, result.stderr
    assert "[1/1] 03_dataset ... ok" in result.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_eval_rows"] == 20


@pytest.mark.slow
def test_a_change_to_a_step_that_does_not_run_is_refused(smoke_run):
    """Step 5 trains what 02-04 left in the run folder: a value of theirs changed for a run that skips
    them would not reach training, so it is refused before any notebook runs, naming the step to add."""
    run_dir, _ = smoke_run
    result = runner("configs/smoke.yaml", "--run-dir", run_dir, "--only", "05", "-p", "max_steps", "6")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "max_steps (4 in the run folder, 6 now; 04_trainer)" in result.stderr and "--only 04" in result.stderr
    assert json.loads((run_dir / "params.json").read_text())["max_steps"] == 4
    assert "[1/1]" not in result.stdout


@pytest.mark.slow
def test_a_run_that_failed_in_07_resumes_there(smoke_run):
    """07 and 08 again on a run folder whose export is gone (as after a failure there): no step before
    them re-runs, the merged folder and the GGUF file are back, and metrics.json keeps what every
    notebook cost, the earlier ones included."""
    import shutil

    run_dir, _ = smoke_run
    before = json.loads((run_dir / "metrics.json").read_text())["notebook_costs"]
    shutil.rmtree(run_dir / "merged")
    (run_dir / "model.gguf").unlink()
    result = runner("configs/smoke.yaml", "--run-dir", run_dir, "--only", "07", "--only", "08")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[1/2] 07_export ... ok" in result.stdout and "[2/2] 08_chat ... ok" in result.stdout
    assert (run_dir / "merged" / "config.json").exists() and (run_dir / "model.gguf").exists()
    after = json.loads((run_dir / "metrics.json").read_text())
    assert list(after["notebook_costs"]) == list(before)
    assert after["notebook_costs"]["05_train_and_save"] == before["05_train_and_save"]
    assert after["notebook_costs"]["07_export"] != before["07_export"] and after["merged_check"]["ok"]


def test_the_next_notebooks_kernel_starts_while_the_current_one_runs(monkeypatch):
    """Where the next notebook needs another kernel (07's plain one after an unsloth one, and back; a
    fresh one for every notebook in --kernel fresh), it is started ahead and handed over; where the
    shared kernel serves, none is started."""
    from jupyter_core.utils import run_sync

    from tools import kernels as K

    def alive(km):  # the kernels' managers are asynchronous ones (tools.kernels says why)
        return run_sync(km.is_alive)()

    monkeypatch.setitem(K.WARM, "unsloth", "import os\n")  # no unsloth on a CPU: the flavour alone
    nb = {n[:2]: REPO / "notebooks" / n for n in ("06_evaluate.ipynb", "07_export.ipynb", "08_chat.ipynb")}
    k = K.Kernels("shared", True, REPO / "notebooks")
    try:
        first = k.for_notebook(nb["06"])
        k.prepare(nb["07"])
        assert k.spare is not None and k.spare[0] == "plain"
        spare = k.spare[1]
        assert k.for_notebook(nb["07"]) is spare and not alive(first) and k.spare is None
        k.prepare(nb["08"])
        assert k.spare[0] == "unsloth"
        third = k.for_notebook(nb["08"])
        assert alive(third) and not alive(spare)
        k.prepare(nb["08"])  # the same flavour again: the shared kernel serves
        assert k.spare is None and k.for_notebook(nb["08"]) is third
    finally:
        k.shutdown()
    assert not alive(third)
    fresh = K.Kernels("fresh", False, REPO / "notebooks")
    try:
        first = fresh.for_notebook(nb["06"])
        fresh.prepare(nb["07"])
        assert fresh.for_notebook(nb["07"]) is not first and not alive(first)
    finally:
        fresh.shutdown()


@pytest.mark.slow
def test_fresh_kernels_run_the_same_steps(tmp_path):
    """--kernel fresh (a kernel per notebook, as in JupyterLab) gives what the shared kernel gives."""
    from helpers.data import split

    for kernel in ("fresh", "shared"):
        result = runner("configs/smoke.yaml", "--run-dir", tmp_path / kernel, "--only", "01", "--only", "03",
                        "--only", "04", "--kernel", kernel)
        assert result.returncode == 0, result.stderr
        assert "[3/3] 04_trainer ... ok" in result.stdout
    fresh, shared = split.load(tmp_path / "fresh"), split.load(tmp_path / "shared")
    assert fresh[0]["input_ids"] == shared[0]["input_ids"] and fresh[1]["text"] == shared[1]["text"]


def test_unknown_parameter_stops_before_any_notebook(tmp_path):
    result = runner("configs/smoke.yaml", "--run-dir", tmp_path, "-p", "lora_rank", "8")
    assert result.returncode == 2
    assert "Unknown parameter 'lora_rank'. Did you mean 'lora_r'?" in result.stderr
    assert not list(tmp_path.glob("*.ipynb"))


def test_unknown_notebook_number(tmp_path):
    result = runner("configs/smoke.yaml", "--run-dir", tmp_path, "--only", "9")
    assert result.returncode == 2 and "--only 09: no such notebook" in result.stderr


@pytest.mark.slow
def test_a_killed_kernel_ends_the_run_within_seconds_naming_notebook_cell_and_signal(tmp_path):
    """kill -9 of the kernel while 05 trains (as the out-of-memory killer does): the runner used to wait
    for the cell's reply forever."""
    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "tools.run", "configs/smoke.yaml", "--run-dir", str(tmp_path),
                             *[a for n in ("01", "02", "03", "04", "05") for a in ("--only", n)]], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for line in proc.stdout:  # 05's first training step: the kernel is deep in trainer.train()
            if "05_train_and_save: step" in line:
                break
        kernels = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "ipykernel_launcher" in " ".join(p.cmdline())]
        assert kernels, "no kernel process found"
        for kernel in kernels:
            kernel.kill()
        killed = time.monotonic()
        _, err = proc.communicate(timeout=120)
        assert time.monotonic() - killed < 30
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert "05_train_and_save.ipynb: the kernel died in code cell" in err, err
    assert "killed by SIGKILL (signal 9), most often the system's out-of-memory killer" in err, err


@pytest.mark.slow
def test_failing_cell_names_notebook_and_cell(tmp_path):
    result = runner("configs/smoke.yaml", "--run-dir", tmp_path, "--only", "01", "--only", "03", "-p", "dataset",
                    "data/messy_example.jsonl", "-p", "on_bad_rows", "fail")
    assert result.returncode == 1
    assert '03_dataset.ipynb failed in code cell 5 (tokenize = rows.Tokenizer(tokenizer, P["max_seq_length"]' in result.stderr
    assert "DatasetError: data/messy_example.jsonl: " in result.stderr and "on_bad_rows = 'fail'" in result.stderr
    assert not (tmp_path / "data").exists()  # nothing that looks like a prepared split


@pytest.mark.parametrize("name, value, message", [
    ("dataset", "missing.jsonl", "Parameter 'dataset' = 'missing.jsonl': no such file"),
    ("model_name", "./no/such/model", "Parameter 'model_name' = './no/such/model': no such folder"),
    ("target_modules", "[q_proj, nope_proj]", "Parameter 'target_modules' names ['nope_proj'], which are no layers"),
    ("dataset", "data", "/data is a folder; expected one data file"),
    ("eval_fraction", "0", "Parameter 'eval_fraction' = 0 holds no rows out"),
])
def test_missing_inputs_stop_before_any_notebook(tmp_path, bundled_dir, name, value, message):
    result = runner("configs/smoke.yaml", "--run-dir", tmp_path, "-p", name, value)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not list(tmp_path.glob("*.ipynb"))


@pytest.mark.slow
def test_post_recipe_offline_fails_fast_with_a_clear_message(tmp_path):
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    result = runner("configs/llama31-8b-oig.yaml", "--run-dir", tmp_path, "--only", "01", env=env)
    assert result.returncode == 2  # refused before any notebook: the post's data is a URL this machine cannot reach
    assert "unified_chip2.jsonl' is a URL, and its host is not reachable" in result.stderr
    assert not list(tmp_path.glob("*.ipynb"))
    result = runner("configs/llama31-8b-oig.yaml", "--run-dir", tmp_path, "--only", "01", "-p", "dataset",
                    "data/pip_chip2.jsonl", env=env)
    assert result.returncode == 1  # 01 names the model the hub would have given
    assert "'unsloth/Meta-Llama-3.1-8B-bnb-4bit' is not a local folder and the model hub is not reachable" \
        in result.stderr
    assert time.perf_counter() - start < 120  # a kernel start and a refusal, no download attempts


@pytest.mark.slow
def test_plain_papermill_with_a_config_file(tmp_path):
    for notebook in ("01_load_model", "03_dataset"):
        result = subprocess.run([sys.executable, "-m", "papermill", "-f", "configs/smoke.yaml", "-p", "run_dir",
                                 str(tmp_path), f"notebooks/{notebook}.ipynb", str(tmp_path / f"{notebook}.ipynb"),
                                 "--no-progress-bar"], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["num_train_rows"] == 72
    assert (tmp_path / "data" / "train.arrow").exists()


@pytest.mark.slow
def test_messy_file_prints_the_report_and_writes_the_split(tmp_path):
    result = runner("configs/smoke.yaml", "--run-dir", tmp_path, "--only", "01", "--only", "03", "-p", "dataset",
                    "data/messy_example.jsonl")
    assert result.returncode == 0, result.stdout + result.stderr
    for expected in ("data/messy_example.jsonl (oig): read 38, kept 31, truncated 1", "dropped 1: unparsable",
                     "dropped 1: not UTF-8", "dropped 1: duplicate", "dropped 1: turns don't alternate",
                     "fixed 38: CRLF line endings converted", "line 9: not UTF-8 (byte 0xe9 at column 28"):
        assert expected in result.stdout, expected
    from helpers.data import split

    assert [len(part) for part in split.load(tmp_path)] == [28, 3]
    assert json.loads((tmp_path / "data_report.json").read_text())["kept"] == 31


@pytest.mark.slow
def test_unusable_file_exits_nonzero_naming_it_and_leaves_nothing_of_an_earlier_split(tmp_path):
    run_dir = tmp_path / "run"
    assert runner("configs/smoke.yaml", "--run-dir", run_dir, "--only", "01", "--only", "03").returncode == 0
    assert (run_dir / "token_lengths.png").exists() and (run_dir / "data").exists()
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"{\n[1, 2]\n\xff\n")
    result = runner("configs/smoke.yaml", "--run-dir", run_dir, "--only", "03", "-p", "dataset", path)
    assert result.returncode == 1
    assert "DatasetError: " in result.stderr and str(path) in result.stderr
    assert "no usable rows (read 3, dropped: " in result.stderr
    # what the earlier run of 03 left is gone: nothing reads as this run's result but its failure
    assert not (run_dir / "data").exists() and not (run_dir / ".data.partial").exists()
    assert not (run_dir / "token_lengths.png").exists()
    assert "num_train_rows" not in json.loads((run_dir / "metrics.json").read_text())
    assert json.loads((run_dir / "data_report.json").read_text())["error"].startswith(f"{path}: no usable rows")
    assert '"ename": "DatasetError"' in (run_dir / "03_dataset.ipynb").read_text()


def mounted_tmpfs(folder, size):
    """A tiny file system of its own (needs root), to fill up; None where it cannot be mounted."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return folder if done.returncode == 0 else None


@pytest.mark.slow
def test_a_full_disk_names_the_notebook_and_leaves_nothing_half_written(tmp_path):
    import shutil

    assert runner("configs/smoke.yaml", "--run-dir", tmp_path / "prep", "--only", "01").returncode == 0
    base = tmp_path / "prep" / "base"  # what 03 needs of step 1: its tokenizer, on the full disk too
    size = sum(p.stat().st_size for p in base.iterdir()) + 80 * 1024
    disk = mounted_tmpfs(tmp_path / "disk", f"{(size // 4096 + 1) * 4}k")
    if disk is None:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        run_dir = disk / "run"
        shutil.copytree(base, run_dir / "base")
        result = runner("configs/smoke.yaml", "--run-dir", run_dir, "--only", "03")
        files = {p.name: p for p in run_dir.rglob("*") if p.is_file() and "base" not in p.parts}
        json_ok = {name: json.loads(p.read_text()) is not None for name, p in files.items() if name.endswith(".json")}
    finally:
        subprocess.run(["umount", str(disk)])
    assert result.returncode == 1
    assert re.search(r"error: 03_dataset.ipynb.*No space left on device.*the disk of the run folder .* has "
                     r"0\.\d MiB free", result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    assert "03_dataset.ipynb" not in files and not any(n.endswith((".tmp", ".partial.ipynb")) for n in files), files
    assert all(json_ok.values())  # every JSON file left is whole
    assert "train.arrow" not in files



def test_values_are_read_as_yaml_with_exponent_floats():
    from tools.run import parse_value, yaml_value

    assert parse_value("1e-4") == 1e-4 and parse_value("[q_proj, v_proj]") == ["q_proj", "v_proj"]
    assert parse_value("true") is True and parse_value("null") is None and parse_value("8") == 8
    for value in (2e-4, "bundled:SmolLM2-135M-Instruct", ["a", "b"], None, False):
        assert parse_value(yaml_value(value)) == value


def test_a_kernel_slow_to_start_is_waited_for_not_called_dead(tmp_path):
    """A kernel that needs seconds before it answers (its first imports on a busy GPU machine): the runner
    waits for it. Judged by its heartbeat alone, as a client made from connection info does, it was
    "dead before replying to kernel_info" (the smoke chain on an H200 failed so, 2026-12-02)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    from tools.kernels import run_in_kernel

    spec = tmp_path / "slow"
    spec.mkdir()
    late = "import time; time.sleep(6); from ipykernel.kernelapp import launch_new_instance; launch_new_instance()"
    (spec / "kernel.json").write_text(json.dumps({"argv": [sys.executable, "-c", late, "-f", "{connection_file}"],
                                                  "display_name": "slow", "language": "python"}))
    km = AsyncKernelManager(kernel_name="slow", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path)]))
    run_sync(km.start_kernel)()
    try:
        started = time.perf_counter()
        assert run_in_kernel(km, "print('WORKBOOK_RESULT {\"ok\": 1}')") == {"ok": 1}
        assert time.perf_counter() - started > 5
    finally:
        run_sync(km.shutdown_kernel)(now=True)


@pytest.mark.slow
def test_a_dataset_path_relative_to_where_the_command_started(tmp_path, pip_rows):
    import os
    import shutil

    shutil.copy(pip_rows, tmp_path / "rows.jsonl")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # the kernels run in notebooks/: the runner hands them the path it found (was: 03 failed, no such file)
    result = subprocess.run([sys.executable, "-m", "tools.run", str(REPO / "configs" / "smoke.yaml"), "--run-dir",
                             str(tmp_path / "run"), "--only", "01", "--only", "03", "-p", "dataset", "rows.jsonl"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["rows_read"] == 12


def test_a_run_dir_that_is_a_file_or_read_only_is_named(tmp_path):
    # each was a raw FileExistsError / OSError traceback
    (tmp_path / "file").write_text("x")
    result = runner("configs/smoke.yaml", "--run-dir", tmp_path / "file", "--only", "01")
    assert result.returncode == 2 and f"{tmp_path / 'file'} is a file; expected a folder" in result.stderr
    read_only = tmp_path / "ro"
    read_only.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(read_only)]).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        results = [runner("configs/smoke.yaml", "--run-dir", folder, "--only", "01")
                   for folder in (read_only, read_only / "run")]
    finally:
        subprocess.run(["umount", str(read_only)])
    assert results[0].returncode == 2 and f"{read_only} is read-only for this user" in results[0].stderr
    assert results[1].returncode == 2 and "cannot be made: Read-only file system" in results[1].stderr
    assert not any("Traceback" in r.stderr for r in results)


@pytest.mark.slow
def test_only_03_on_a_trained_folder_does_not_print_the_earlier_training_as_its_own(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"train_loss": 1.2345, "eval_loss_finetuned": 0.5}))
    result = runner("configs/smoke.yaml", "--run-dir", tmp_path, "--only", "01", "--only", "03")
    assert result.returncode == 0, result.stderr
    assert "train_loss" not in result.stdout and "eval_loss_finetuned" not in result.stdout  # was: metrics: ...
