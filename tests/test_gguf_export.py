"""Step 7's GGUF writer and Modelfile, on small models: what llama.cpp expects, read back by transformers."""
import json

import pytest

from fixtures import gguf_read_back
from fixtures import llama_cpp_tools as llama_cpp_check
from helpers.export import gguf_export, gguf_meta, gguf_quantize, gguf_write, ollama

needs_llama_cpp = pytest.mark.skipif(not llama_cpp_check.available(),
                                     reason=f"llama.cpp's Python binding is not installed: {llama_cpp_check.INSTALL}")
# what llama.cpp's pre-tokenizers must split as the tokenizer does: digits, contractions, spaces, accents, emoji
SPLIT_TEXTS = ["<human>: What is 12 plus 30?\n<bot>: Pip here! 42. Happy to help!",
               "It's 2024; they'll pay $1,234.56 for   three   spaces.\n\n\tTabs, café, naïve, 東京, 🙂!"]

LLAMA3_TEMPLATE = (  # Meta-Llama-3-8B-Instruct's chat template
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def test_llama31_rope_factors_match_transformers():
    """llama.cpp stores Llama 3.1's RoPE scaling as one divisor per frequency (rope_freqs); they must be
    the ratio of transformers' plain and llama3-scaled frequencies."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192, "rope_theta": 500000.0}
    config = LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_parameters=scaling)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config)
    plain = 1.0 / (500000.0 ** (__import__("torch").arange(0, 128, 2).float() / 128))
    factors = gguf_meta.llama3_rope_factors({"hidden_size": 4096, "num_attention_heads": 32, "rope_parameters": scaling})
    assert len(factors) == 64 and factors[0] == 1.0 and factors[-1] == 8.0
    assert (plain / scaled).tolist() == pytest.approx(factors, rel=1e-4)


def test_q_and_k_rows_are_permuted_as_transformers_undoes_it():
    import torch
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weight = torch.arange(8 * 64 * 3, dtype=torch.float32).reshape(8 * 64, 3)
    there = gguf_meta.permute_for_rope(weight, 8)
    assert not torch.equal(there, weight)
    back = LlamaTensorProcessor(config={"num_attention_heads": 8, "num_key_value_heads": 8}).process(
        there.numpy(), "blk.0.attn_q.weight")
    assert torch.equal(torch.from_numpy(back.weights), weight)


@pytest.mark.parametrize("pre,name", [
    ({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, "gpt-2"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, {"type": "ByteLevel"}]}, "smollm"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "(?i:'s|'t)|\\p{N}{1,3}| ?[^\\s]+"}},
                                            {"type": "ByteLevel", "use_regex": False}]}, "llama-bpe"),
])
def test_the_pretokenizer_gets_llama_cpps_name(pre, name):
    assert gguf_meta.pretokenizer_name({"pre_tokenizer": pre}) == name


def test_an_unknown_pretokenizer_or_architecture_is_named(tiny_model_dir, tmp_path):
    with pytest.raises(gguf_meta.UnsupportedModel, match="Metaspace"):
        gguf_meta.pretokenizer_name({"pre_tokenizer": {"type": "Metaspace"}})
    folder = tmp_path / "qwen"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    path, message = gguf_export.write(folder, tmp_path)
    assert path is None and "Qwen2ForCausalLM" in message and "GGUF export skipped" in message
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.partial"))


@pytest.fixture(scope="module")
def tiny_llama3_dir(tmp_path_factory):
    """The tiny Llama with a Llama 3 style tokenizer (its split regex, BOS on every text)."""
    from fixtures.synthetic import random_llama

    return random_llama(tmp_path_factory.mktemp("tiny3") / "tiny-llama3", tokenizer="llama3", hidden_size=128,
                        intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                        max_position_embeddings=256, tie_word_embeddings=True)


@needs_llama_cpp
@pytest.mark.parametrize("style,pre", [("chatml", "gpt-2"), ("llama3", "llama-bpe")])
def test_llama_cpp_opens_each_pretokenizer_the_writer_names(style, pre, tiny_model_dir, tiny_llama3_dir, tmp_path):
    """llama.cpp refuses a file whose pre-tokenizer it does not know, and splits text by the name it
    finds: the ids must be the tokenizer's own. (SmolLM2's `smollm`: the smoke run's file, test_runner.py.)"""
    import gguf

    folder = tiny_model_dir if style == "chatml" else tiny_llama3_dir
    written = gguf_write.write(folder, tmp_path / "tiny.gguf", "f16")
    assert gguf.GGUFReader(written.path).fields["tokenizer.ggml.pre"].contents() == pre
    result = llama_cpp_check.compare(folder, written.path, SPLIT_TEXTS)
    assert result["same_ids"] == [True, True], result


@needs_llama_cpp
def test_llama_cpp_refuses_the_name_the_writer_used_to_write(tiny_model_dir, tmp_path, monkeypatch):
    """The check fails on the old defect: GPT-2's split named `gpt2` (llama.cpp knows it as `gpt-2`)."""
    real = gguf_write.vocabulary
    monkeypatch.setattr(gguf_write, "vocabulary", lambda *a: (*real(*a)[:3], "gpt2"))
    written = gguf_write.write(tiny_model_dir, tmp_path / "old.gguf", "f16")
    with pytest.raises(ValueError):
        llama_cpp_check.open_gguf(written.path)


def test_the_bundled_model_names_smollms_split(bundled_dir):
    """The bundled SmolLM2 cuts digits apart before BPE, as its GGUF says (`smollm`): the folder converted
    from it says so too, so that the GGUF 07 writes from the fine-tuned model names the same split."""
    tokenizer_json = json.loads((bundled_dir / "tokenizer.json").read_text(encoding="utf-8"))
    assert gguf_meta.pretokenizer_name(tokenizer_json) == "smollm"


@pytest.mark.parametrize("outtype", ["f32", "q8_0"])
def test_a_tiny_llama_reads_back_from_gguf(tiny_model_dir, tmp_path, outtype):
    written = gguf_write.write(tiny_model_dir, tmp_path / "tiny.gguf", outtype)
    texts = ["<human>: Say red.\n<bot>: Pip here! red. Happy to help!", "<human>: What is 12 plus 30?\n<bot>:"]
    result = gguf_read_back.compare(tiny_model_dir, written.path, texts)
    assert result["same_ids"] == [True, True]
    if outtype == "f32":
        assert result["max_abs_logit_diff"] <= 1e-4 * max(1.0, result["logit_scale"]) and result["same_next_token"] == 1.0
    else:
        assert result["same_next_token"] >= 0.95


def test_what_was_written_is_what_the_file_holds(tiny_model_dir, tmp_path):
    """The table 07 shows comes from the writer; the gguf package reading the file back must agree."""
    import gguf

    written = gguf_write.write(tiny_model_dir, tmp_path / "tiny.gguf", "q8_0")
    table = written.table()
    reader = gguf.GGUFReader(written.path)
    assert reader.fields["general.architecture"].contents() == table.loc["architecture", "value"] == "llama"
    assert reader.fields["tokenizer.ggml.pre"].contents() == table.loc["pre-tokenizer", "value"] == "gpt-2"
    kinds = {}
    for tensor in reader.tensors:
        kinds[tensor.tensor_type.name] = kinds.get(tensor.tensor_type.name, 0) + 1
    assert table.loc["tensors", "value"] == ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    assert len(reader.tensors) == written.tensors and set(kinds) == {"F32", "Q8_0"}


@pytest.fixture(scope="module")
def smollm_tokenizer(bundled_dir):
    from helpers.model import loading as model

    return model.load_tokenizer("bundled:SmolLM2-135M-Instruct")


CONVERSATION = [{"role": "system", "content": "You are Pip."}, {"role": "user", "content": "Capital of Japan?"},
                {"role": "assistant", "content": "Pip here! Tokyo. Happy to help!"}, {"role": "user", "content": "And of Italy?"}]


def hf_render(tokenizer, messages):
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text[len(tokenizer.bos_token):] if tokenizer.bos_token and "<|start_header_id|>" in text and \
        text.startswith(tokenizer.bos_token) else text


@pytest.mark.parametrize("kind", ["chatml", "llama3", "plain"])
def test_the_modelfile_layout_renders_like_the_chat_template(kind, smollm_tokenizer, tiny_model_dir):
    from transformers import AutoTokenizer

    from helpers.data.formats import template_system, with_system
    from helpers.model.loading import ensure_chat_template

    if kind == "chatml":
        tokenizer = smollm_tokenizer
    else:
        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        if kind == "llama3":
            tokenizer.chat_template = LLAMA3_TEMPLATE
        ensure_chat_template(tokenizer)  # plain: the workbook's <human>:/<bot>: template
    layout = ollama.layout_of(tokenizer)
    assert layout is not None
    default = template_system(tokenizer)  # SmolLM2's: the Modelfile's SYSTEM line supplies it in Ollama
    for messages in (CONVERSATION, CONVERSATION[1:], CONVERSATION[1:2]):
        assert layout.render(with_system(messages, default)) == hf_render(tokenizer, messages)
    text, _ = ollama.modelfile(tokenizer, "model.gguf", "You are Pip.", 64, 512)
    assert text.startswith("FROM ./model.gguf\n") and 'SYSTEM """You are Pip."""' in text
    assert all(f'PARAMETER stop "{s}"' in text for s in layout.stops) and "PARAMETER temperature 0" in text
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert template == layout.go_template() and template.endswith(layout.generation_prompt)
    for role, (before, after) in layout.turns.items():
        assert f'eq .Role "{role}" }}}}{before}{{{{ .Content }}}}{after}' in template


def test_an_unknown_chat_layout_leaves_the_template_to_the_gguf_file(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    text, note = ollama.modelfile(tokenizer, "model.gguf", None, 64, 512)
    assert "TEMPLATE" not in text and "SYSTEM" not in text and "not one the workbook knows" in note


def test_a_write_that_fails_leaves_no_file(tiny_model_dir, tmp_path, monkeypatch):
    """Interrupted while the tensors are written: neither model.gguf nor the partial file remains."""
    import gguf

    real, calls = gguf.GGUFWriter.write_tensor_data, []

    def broken(self, *args, **kwargs):  # the disk fills up at the third tensor, the file half-written
        calls.append(1)
        if len(calls) == 3:
            assert any(tmp_path.iterdir())
            raise OSError("No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", broken)
    with pytest.raises(OSError, match="No space"):
        gguf_write.write(tiny_model_dir, tmp_path / "model.gguf", "q8_0")
    assert list(tmp_path.iterdir()) == []


def awkward_values(rows=301, width=4096):
    """float32 rows with zero blocks, tiny and large values and exact halves (where rounding half away
    from zero and half to even part): what a quantizer written again must get exactly right."""
    import numpy as np

    rng = np.random.default_rng(0)
    array = (rng.standard_normal((rows, width)) * rng.choice([1e-6, 1e-2, 1.0, 300.0], size=(rows, 1))).astype(np.float32)
    array[3, :64] = 0
    array[5, :32] = np.arange(-16, 16) + 0.5
    array[5, 0] = 127  # this block's scale is exactly 1: its halves are rounded as they are
    return array


def same_bytes_as_gguf(qtype: str, device: str = "cpu", chunk: int | None = None, monkeypatch=None):
    """The writer's quantizers (threaded gguf on the CPU; torch on `device`) against gguf's own bytes,
    from float32 and from bfloat16 input (what a merged model holds), on rows that do not divide into
    the threads' blocks or torch's slices evenly."""
    from concurrent.futures import ThreadPoolExecutor

    import gguf
    import torch

    q = gguf.GGMLQuantizationType[qtype]
    array = awkward_values()
    if chunk is not None:
        monkeypatch.setattr(gguf_quantize, "CHUNK_VALUES", chunk)
    for dtype in (torch.float32, torch.bfloat16):
        tensor = torch.from_numpy(array).to(dtype)
        reference = gguf.quants.quantize(tensor.float().numpy(), q)
        with ThreadPoolExecutor(3) as pool:
            threaded = gguf_quantize.quantized(tensor, q, pool)
        in_torch = gguf_quantize.quantized_in_torch(tensor.to(device), q)
        for mine in (threaded, in_torch):
            assert mine.shape == reference.shape and mine.tobytes() == reference.tobytes(), (qtype, dtype, device)


@pytest.mark.parametrize("qtype", ["Q8_0", "F16", "BF16", "F32"])
def test_the_quantizers_write_what_gguf_writes(qtype, monkeypatch):
    same_bytes_as_gguf(qtype, chunk=7 * 4096, monkeypatch=monkeypatch)


def test_the_quantizer_check_sees_a_rounding_that_differs(monkeypatch):
    """The check above fails on a Q8_0 that rounds halves to even (torch.round) instead of away from zero."""
    import torch

    def to_even(tensor):
        blocks = tensor.reshape(-1, 32)
        d = blocks.abs().amax(1, keepdim=True) / torch.full_like(blocks[:, :1], 127.0)
        qs = torch.round(blocks * torch.where(d == 0, torch.zeros_like(d), 1 / d))
        return torch.cat([d.half().view(torch.uint8), qs.to(torch.int8).view(torch.uint8)], 1)

    monkeypatch.setattr(gguf_quantize, "_q8_0", to_even)
    with pytest.raises(AssertionError):
        same_bytes_as_gguf("Q8_0")


@pytest.fixture
def llama3_chat_dir(tiny_llama3_dir, tmp_path):
    """The tiny Llama 3 style model with Llama 3's chat template: it ends an answer with <|eot_id|>,
    not with its EOS <|end_of_text|>, as Llama 3.1 Instruct does."""
    import shutil

    from transformers import AutoTokenizer

    folder = shutil.copytree(tiny_llama3_dir, tmp_path / "llama3-chat")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = LLAMA3_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def test_the_gguf_ends_where_the_model_learned_to_and_the_modelfile_agrees(llama3_chat_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama3_chat_dir)
    written = gguf_write.write(llama3_chat_dir, tmp_path / "model.gguf", "q8_0")
    stored = gguf_meta.stored(written.path)
    assert stored["eot_token_id"] == tokenizer.convert_tokens_to_ids("<|eot_id|>") != stored["eos_token_id"]
    assert stored["chat_template"] == LLAMA3_TEMPLATE and "stored as EOT" in written.facts["end of turn"]
    path, note = ollama.write_modelfile(tmp_path, tokenizer, "model.gguf", None, 64, 512)
    assert 'PARAMETER stop "<|eot_id|>"' in path.read_text() and "agree with the tokenizer" in note


def test_a_modelfile_that_disagrees_is_refused_naming_how(llama3_chat_dir, tmp_path, monkeypatch):
    """Each way the three renderings can part is refused, and no Modelfile is left: a GGUF file that
    does not end generation on the trained end of turn (the writer before it stored an EOT id), a stop
    list without it, a TEMPLATE that renders conversations otherwise."""
    from dataclasses import replace

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama3_chat_dir)

    def refused(match):
        (tmp_path / "Modelfile").write_text("an earlier one")
        with pytest.raises(ollama.Disagreement, match=match):
            ollama.write_modelfile(tmp_path, tokenizer, "model.gguf", None, 64, 512)
        assert not (tmp_path / "Modelfile").exists()

    with monkeypatch.context() as m:
        m.setattr(gguf_write, "turn_end_id", lambda folder, tokens: None)
        gguf_write.write(llama3_chat_dir, tmp_path / "model.gguf", "q8_0")
    refused(r"trained to end an answer with <\|eot_id\|> .* llama.cpp would not stop there")
    gguf_write.write(llama3_chat_dir, tmp_path / "model.gguf", "q8_0")
    with monkeypatch.context() as m:
        m.setattr(ollama, "LLAMA3", replace(ollama.LLAMA3, stops=("<|end_of_text|>",)))
        refused(r"not among the Modelfile's stops \['<\|end_of_text\|>'\]")
    with monkeypatch.context() as m:
        m.setattr(ollama, "layout_of", lambda tok: ollama.CHATML)
        refused(r"the Modelfile's TEMPLATE renders \['system', 'user', 'assistant', 'user'\] as '<\|im_start\|>system")
    ollama.write_modelfile(tmp_path, tokenizer, "model.gguf", None, 64, 512)  # as written: agreed
