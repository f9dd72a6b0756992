"""Steps 6-8 on a tiny model trained on the spot by the notebooks' own cells (01-05): evaluation, export
(merge, reload without peft, GGUF through llama.cpp's converter where it is chosen) and streaming chat.
The gguf package's own writer: tests/test_gguf_export.py and the smoke run."""
import json
import math
from pathlib import Path

import pytest

from conftest import notebooks
from helpers import rundir
from helpers.data import split
from helpers.evaluation import chat, loss as token_loss, questions
from helpers.export import gguf_export, merge, merge_check, merging
from helpers.model import weights


@pytest.fixture(scope="module")
def trained(tiny_model_dir, pip_rows, tmp_path_factory):
    """A run folder after 01-05 on the tiny model: its values (as the notebooks were given them)."""
    values = {"model_name": str(tiny_model_dir), "run_dir": str(tmp_path_factory.mktemp("trained") / "run"),
              "dataset": str(pip_rows), "max_seq_length": 128, "max_steps": 8, "warmup_steps": 1,
              "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "learning_rate": 1e-2,
              "eval_fraction": 0.25, "num_eval_prompts": 2, "max_new_tokens": 6}
    notebooks(values, "01", "02", "03", "04", "05")
    return values


def adapter_model(trained):
    """The trained adapter on its base, as 06 loads it on the hf backend."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    adapter = Path(trained["run_dir"]) / "adapter"
    return AutoPeftModelForCausalLM.from_pretrained(adapter).eval(), AutoTokenizer.from_pretrained(adapter)


def merged(trained, dtype="float32", run_dir=None):
    """07's merge, as its first cell makes it: the adapter's base and the adapter loaded, then merged."""
    from merges import load_for_merge

    model, tokenizer = load_for_merge(trained["run_dir"], dtype)
    return merge.merge_and_save(model, tokenizer, run_dir or trained["run_dir"], dtype)


def test_evaluation_compares_base_and_finetuned(trained):
    model, tok = adapter_model(trained)
    _, held_out = split.load(trained["run_dir"])
    metrics = json.loads((Path(trained["run_dir"]) / "metrics.json").read_text())
    result = token_loss.compare(model, held_out, run_dir=trained["run_dir"], max_eval_rows=200,
                                per_device_eval_batch_size=8)
    assert result["measured_in"] == "05_train_and_save" and result["eval_loss_base"] == metrics["eval_loss_base"]
    (Path(trained["run_dir"]) / "metrics.json").write_text(json.dumps({}))  # an adapter trained elsewhere: measured
    measured = token_loss.compare(model, held_out, run_dir=trained["run_dir"], max_eval_rows=200,
                                  per_device_eval_batch_size=8)
    (Path(trained["run_dir"]) / "metrics.json").write_text(json.dumps(metrics))
    assert measured["measured_in"] == "06_evaluate"
    assert measured["eval_loss_finetuned"] == pytest.approx(result["eval_loss_finetuned"], rel=1e-4)
    assert measured["eval_loss_finetuned"] < measured["eval_loss_base"]
    assert measured["perplexity_base"] == pytest.approx(math.exp(measured["eval_loss_base"]))
    table = questions.side_by_side(model, tok, held_out, 2, 6, "hf", seed=0)
    assert list(table.columns) == ["prompt", "reference", "base model", "fine-tuned", "fact: base model",
                                   "fact: fine-tuned"] and len(table) == 2
    assert table["fine-tuned"].tolist() != table["base model"].tolist()
    again = questions.side_by_side(model, tok, held_out, 2, 6, "hf", seed=0)
    assert again.equals(table)  # greedy and seeded: the table repeats
    path = questions.save(trained["run_dir"], result, table)
    assert path.read_text().splitlines()[0] == "prompt,reference,base model,fine-tuned,fact: base model,fact: fine-tuned"
    assert rundir.read_json(path.parent / "metrics.json")["eval_loss_base"] == result["eval_loss_base"]


def test_held_out_loss_is_measured_while_training_and_its_last_value_is_05s_figure(trained):
    run_dir = Path(trained["run_dir"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    logged = [(e["step"], e["eval_loss"]) for e in json.loads((run_dir / "log_history.json").read_text())
              if "eval_loss" in e]
    assert metrics["eval_steps"] == 3  # None: three evaluations in 8 steps
    assert [s for s, _ in logged] == [s for s, _ in metrics["eval_history"]] == [3, 6, 8]
    assert logged[-1][1] == metrics["eval_loss_finetuned"]  # 05 reports the last step's evaluation
    from peft import AutoPeftModelForCausalLM

    from helpers.model import loading

    saved = AutoPeftModelForCausalLM.from_pretrained(run_dir / "adapter", **loading.base(run_dir).arguments)
    _, held_out = split.load(run_dir)
    measured = token_loss.held_out_loss(saved, held_out, 200, 8)  # the adapter on disk, measured again
    assert abs(measured - metrics["eval_loss_finetuned"]) < 1e-6
    assert metrics["adapter_step"] == 8 and metrics["stopped_early_at"] is None
    steps = [e["step"] for e in json.loads((run_dir / "log_history.json").read_text()) if "loss" in e]
    assert steps == list(range(1, 9))  # an evaluation does not take a step's training loss out of the log
    assert (run_dir / "loss_curve.png").stat().st_size > 0


def test_mean_token_loss_weights_every_token_once(trained):
    """Against a direct computation: rows of different lengths, labels of -100 left out."""
    import torch
    import torch.nn.functional as F
    from datasets import Dataset

    model, tok = adapter_model(trained)
    rows = {"input_ids": [[5, 6, 7, 8, 9, 10], [11, 12, 13]], "labels": [[-100, -100, 7, 8, 9, 10], [11, 12, 13]]}
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in zip(rows["input_ids"], rows["labels"]):
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            target = torch.tensor(labels[1:])
            total += F.cross_entropy(logits, target, ignore_index=-100, reduction="sum").item()
            count += int((target != -100).sum())
    assert token_loss.mean_token_loss(model, Dataset.from_dict(rows), batch_size=2) == pytest.approx(total / count,
                                                                                                   rel=1e-5)


def test_held_out_loss_does_not_move_with_batch_size_or_chunking(trained, monkeypatch):
    """Rows of 4, 21 and 15 answer tokens: a mean of per-batch means moves with the batch size; the
    workbook's token-weighted loss does not, nor with how many logit positions are made at once."""
    from datasets import Dataset

    model, tok = adapter_model(trained)
    lengths = (4, 21, 15)
    rows = {"input_ids": [[5 + (i * 7 + j) % 90 for j in range(n + 1)] for i, n in enumerate(lengths)]}
    rows["labels"] = [[-100] + ids[1:] for ids in rows["input_ids"]]
    data_ = Dataset.from_dict(rows)
    losses = [token_loss.mean_token_loss(model, data_, batch_size=b) for b in (1, 2, 3)]
    monkeypatch.setattr(token_loss, "LOGIT_CHUNK", 3)
    losses.append(token_loss.mean_token_loss(model, data_, batch_size=2))
    assert max(losses) - min(losses) < 1e-5, losses


def test_export_merges_and_plain_transformers_reloads_it(trained):
    merged_ = merged(trained)
    folder = merged_.folder
    assert "loaded unquantized in float32" in merged_.base
    names = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in names and not any(n.startswith("adapter") or n.endswith(".bin") for n in names)
    assert "auto_map" not in json.loads((folder / "config.json").read_text())  # no remote code needed
    reloaded = merge_check.reload_without_peft(folder)
    check = merged_.check(reloaded)
    assert check["ok"] and check["max_abs_logit_diff"] <= 1e-3 and check["same_next_token"] == 1.0
    assert check["rounding_logit_diff"] <= 1e-4  # float32: the merged weights compute what the adapter does
    base_logits = merge_check.reload_without_peft(weights.resolve_source(trained["model_name"]))
    assert not merged_.check(base_logits)["ok"]  # the control: the merge mattered
    with pytest.raises(RuntimeError, match="could not load"):
        merge_check.reload_without_peft(folder.parent / "adapter")  # an adapter needs peft: blocked there


def test_export_in_16_bit_in_several_shards(trained, monkeypatch):
    """The merge is written a tensor at a time into shards with an index, as large models are."""
    monkeypatch.setattr(merging, "SHARD_BYTES", 200_000)
    merged_ = merged(trained, "float16")
    shards = sorted(p.name for p in merged_.folder.glob("*.safetensors"))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((merged_.folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    reloaded = merge_check.reload_without_peft(merged_.folder)
    assert reloaded["dtype"] == "torch.float16"
    check = merged_.check(reloaded)
    assert check["ok"] and check["tolerance"] == pytest.approx(merge_check.RELATIVE_TOLERANCE_16BIT * check["logit_scale"])
    assert check["rounding_logit_diff"] > 1e-6  # rounded to 16 bits: not bit-identical to the adapter model


def test_the_16_bit_check_tells_rounding_and_near_ties_from_a_wrong_merge():
    """The folder read back must give what the merged weights gave in the merge's process: another
    device's rounding passes, a logit moved by more than 5% of the scale fails. Against the adapter model,
    16-bit rounding may swap the greedy token where the top two logits nearly tie: such positions are
    counted among the near-ties, not failed."""
    import torch

    torch.manual_seed(0)
    adapter = torch.randn(1, 200, 50) * 10
    scale = float(adapter.abs().max())
    near_ties = range(0, 200, 50)  # 4 of 200 positions where the top two logits nearly tie
    top = adapter.argmax(-1)
    for position in near_ties:
        adapter[0, position, (top[0, position] + 1) % 50] = adapter[0, position].max() - 0.001 * scale
    merged = adapter + 1e-3 * scale * torch.randn_like(adapter)  # what rounding to 16 bits did
    for position in near_ties:  # a small move that changes the greedy token there
        merged[0, position, (top[0, position] + 1) % 50] += 0.002 * scale

    def check(reloaded):
        return merge_check.check(adapter, merged, {"logits": reloaded.tolist()}, "bfloat16")

    other_device = merged + 1e-4 * scale * torch.randn_like(merged)
    other_device[0, 5] -= 0.03 * scale  # one position off by 3% of the scale
    result = check(other_device)
    assert result["ok"] and result["same_next_token"] == pytest.approx(196 / 200)
    assert result["decided_same"] == result["decided_positions"] <= 196
    assert result["rounding_logit_diff"] >= 0.002 * scale
    table = merge_check.check_table(result)
    assert table.loc["same greedy token, decided positions", "value"] == \
        f"{result['decided_positions']} of {result['decided_positions']}"
    moved = merged.clone()
    moved[0, 3, 7] += 0.08 * scale
    assert not check(moved)["ok"]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_wrong_merge_is_refused(trained, tmp_path, dtype):
    """What the check is for: the update scaled by 2x, or one layer's update left out, fails it in
    float32 and in 16-bit; the right merge of the same adapter passes, and the adapter moved the logits
    by far more than the tolerance, so that passing is no accident."""
    import shutil

    from merges import checks

    run_dir = tmp_path / "run"  # a copy: these merges must not replace the module's merged folder
    shutil.copytree(Path(trained["run_dir"]) / "adapter", run_dir / "adapter")
    shutil.copytree(Path(trained["run_dir"]) / "data", run_dir / "data")
    result = checks(str(run_dir), dtype)
    assert result["right"]["ok"], result["right"]
    assert result["adapter_effect"] > 4 * result["right"]["tolerance"], result
    assert not result["scale"]["ok"] and not result["layer"]["ok"], result


def test_a_16_bit_base_too_large_for_the_card_is_merged_in_cpu_memory(trained, monkeypatch):
    """merge_base naming 16-bit weights that do not fit the GPU whole (the original 8B weights on a
    16 GB card): the merge keeps them in CPU memory; where they fit, or where the base is stored in
    4-bit (small, dequantized a layer at a time), it runs on the GPU; without a GPU the question is moot."""
    import torch

    from helpers.model.memory import Placement

    source = weights.resolve_source(trained["model_name"])
    assert "device_map" not in merge.where_to_merge(source)  # no GPU here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for where, on_cpu in (("gpu+cpu", True), ("cpu", True), ("gpu", False)):
        monkeypatch.setattr(merge, "placement", lambda folder, where=where: Placement(where, {}, ""))
        assert ("device_map" not in merge.where_to_merge(source)) is on_cpu, where
    monkeypatch.setattr(weights, "is_prequantized", lambda folder: True)
    assert merge.where_to_merge(source)["device_map"] == {"": 0}


def test_llama_cpp_writer_is_skipped_with_advice_where_it_is_missing(monkeypatch, tmp_path):
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    path, message = gguf_export.write(tmp_path, tmp_path, writer="llama.cpp")
    assert path is None and "GGUF export skipped" in message and "LLAMA_CPP_DIR" in message


def test_gguf_runs_llama_cpp_converter_when_found(monkeypatch, tmp_path):
    """A stand-in converter records its arguments; the workbook must pass the folder, outfile and type,
    and keep the file only when the converter succeeded."""
    script = tmp_path / "convert_hf_to_gguf.py"
    script.write_text("import sys, pathlib\nargs = sys.argv[1:]\n"
                      "pathlib.Path(args[args.index('--outfile') + 1]).write_bytes(b'GGUF' + ' '.join(args).encode())\n"
                      "sys.exit(1 if 'fail' in args[0] else 0)\n")
    monkeypatch.setenv("LLAMA_CPP_DIR", str(tmp_path))
    merged = tmp_path / "merged"
    merged.mkdir()
    written, message = gguf_export.write(merged, tmp_path, "q8_0", writer="llama.cpp")
    path = written.path
    assert path == tmp_path / "model.gguf" and path.read_bytes().startswith(b"GGUF")
    assert f"{merged} --outfile" in path.read_text(errors="ignore") and "--outtype q8_0" in path.read_text(errors="ignore")
    path.unlink()
    failing = tmp_path / "fail"
    failing.mkdir()
    with pytest.raises(RuntimeError, match="failed"):
        gguf_export.write(failing, tmp_path, writer="llama.cpp")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".model.gguf*"))


def test_chat_streams_and_remembers_turns(trained):
    import torch

    model, tok = adapter_model(trained)
    shown = []
    conversation = chat.Chat(model, tok, max_new_tokens=12)
    first = conversation.say("Say red.", show=lambda *a, **k: shown.append(a))
    assert len(first.chunks) > 1 and first.first_chunk_seconds <= first.seconds  # pieces arrived one by one
    # the streamed text is exactly what a plain greedy generate() gives
    prompt = tok.apply_chat_template(conversation.messages[:1], tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    plain = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "".join(first.chunks).strip() == plain.strip()
    conversation.say("Say blue.", show=lambda *a, **k: None)
    assert [m["role"] for m in conversation.messages] == ["user", "assistant", "user", "assistant"]
    assert conversation.messages[1]["content"] == first.text
    assert conversation.table().shape == (4, 2)


def test_chat_prefers_the_merged_folder(trained):
    assert not chat.merged_model(trained["run_dir"], "hf").use or (Path(trained["run_dir"]) / "merged").exists()
    merged(trained)
    choice = chat.merged_model(trained["run_dir"], "hf")
    assert choice.use and "merged/" in choice.why and "step 7" in choice.why
    assert str(trained["run_dir"]) not in choice.why  # a stored notebook shows no machine path
    assert not chat.merged_model(trained["run_dir"], "unsloth").use  # unsloth's 4-bit base with the adapter
