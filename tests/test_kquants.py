"""llama.cpp's K-quants written without llama.cpp (helpers.export.kquants): read back by the gguf
package's dequantizer, compared block by block with ggml's own quantizer where llama-cpp-python is
installed (its libggml-base), and the q4_k_m mix compared tensor by tensor with llama.cpp's
`llama_model_quantize` of the same float32 file."""
import ctypes
from pathlib import Path

import numpy as np
import pytest

from fixtures import llama_cpp_tools as llama_cpp_check
from helpers.export import gguf_write, gguf_quantize, kquants

needs_llama_cpp = pytest.mark.skipif(not llama_cpp_check.available(),
                                     reason=f"llama.cpp's Python binding is not installed: {llama_cpp_check.INSTALL}")
# the largest root-mean-square error, as a share of the values' own spread, on normal weights
RELATIVE_ERROR = {"Q4_K": 0.075, "Q5_K": 0.038, "Q6_K": 0.019}  # measured: 0.071, 0.036, 0.018


def values(rows=2048, seed=0):
    """Normal and heavy-tailed float32 rows of 256, with the blocks a quantizer gets wrong first: all zero,
    half zero, constant, one outlier, all negative."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, 256)) * 0.02).astype(np.float32)
    x[rows // 2:] = (rng.standard_t(3, (rows - rows // 2, 256)) * 0.01).astype(np.float32)
    x[1] = 0
    x[2, :128] = 0
    x[3] = 0.25
    x[4, 17] = 3.0
    x[5] = -np.abs(x[5])
    return x


def dequantized(blocks: np.ndarray, name: str) -> np.ndarray:
    import gguf

    return gguf.quants.dequantize(blocks.reshape(-1), gguf.GGMLQuantizationType[name]).reshape(-1, 256)


@pytest.mark.parametrize("name", ["Q4_K", "Q5_K", "Q6_K"])
def test_gguf_reads_the_k_quants_back(name):
    import gguf
    import torch

    x = values()
    blocks = kquants.QUANTIZERS[name](torch.from_numpy(x)).numpy()
    assert blocks.shape == (len(x), gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]][1])
    back = dequantized(blocks, name)
    normal = slice(8, len(x) // 2)
    rmse = np.sqrt(((back[normal] - x[normal]) ** 2).mean())
    assert rmse <= RELATIVE_ERROR[name] * x[normal].std(), (name, rmse)
    assert np.all(back[1] == 0) and np.all(back[2, :128] == 0)  # zeros stay zero
    assert np.abs(back[3] - 0.25).max() < 1e-3 and abs(back[4, 17] - 3.0) < 0.1


def ggml_quantize(x: np.ndarray, name: str) -> np.ndarray:
    """`x`'s rows quantized by ggml itself (llama-cpp-python's libggml-base: what llama-quantize runs)."""
    import gguf
    import llama_cpp

    library = ctypes.CDLL(str(next((Path(llama_cpp.__file__).parent / "lib").glob("libggml-base.so*"))))
    library.ggml_quantize_chunk.restype = ctypes.c_size_t
    library.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                            ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    qtype = gguf.GGMLQuantizationType[name]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros((x.shape[0], x.shape[1] // block * size), dtype=np.uint8)
    library.ggml_quantize_init(qtype.value)
    library.ggml_quantize_chunk(qtype.value, x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], None)
    return out


def block_agreement(mine: np.ndarray, theirs: np.ndarray, x: np.ndarray, name: str) -> dict:
    rmse = [float(np.sqrt(((dequantized(b, name) - x.reshape(-1, 256)) ** 2).mean())) for b in (mine, theirs)]
    return {"same_blocks": float((mine.reshape(-1, mine.shape[-1]) == theirs.reshape(-1, mine.shape[-1])).all(1).mean()),
            "rmse": rmse[0], "rmse_llama_cpp": rmse[1]}


@needs_llama_cpp
@pytest.mark.parametrize("name", ["Q4_K", "Q5_K", "Q6_K"])
def test_the_k_quants_are_ggmls_block_for_block(name):
    """Against ggml's reference: at least 99% of the blocks byte for byte the same (the rest differ
    where a sum in another order lands a value on the other side of a rounding), the same error."""
    import torch

    x = values()
    result = block_agreement(kquants.QUANTIZERS[name](torch.from_numpy(x)).numpy(), ggml_quantize(x, name), x, name)
    assert result["same_blocks"] >= 0.99, result
    assert result["rmse"] <= 1.01 * result["rmse_llama_cpp"], result


@needs_llama_cpp
def test_the_block_check_sees_a_quantizer_that_differs(monkeypatch):
    """The comparison above fails on Q4_K's search for the min done the way it first was here: every
    trial from the first min rather than from the best one so far."""
    import torch

    original = kquants._best_scale_and_min

    def first_min_only(x, w, nmax, rmin, rdelta, nstep):
        return original(x, w, nmax, rmin, rdelta, 0)  # no trials: the first scale and min only

    monkeypatch.setattr(kquants, "_best_scale_and_min", first_min_only)
    x = values()
    result = block_agreement(kquants.q4_k(torch.from_numpy(x)).numpy(), ggml_quantize(x, "Q4_K"), x, "Q4_K")
    assert result["same_blocks"] < 0.99


def test_the_mix_keeps_llama_cpps_tensors_at_more_bits():
    """q4_k_m at the Llama 3.1 8B shape, as llama.cpp's llama_tensor_get_type picks: Q6_K for the output
    layer and for attn_v and ffn_down in 16 of the 32 layers (the first and last four, every third
    between), Q4_K for the rest; a row of another length than a multiple of 256 falls back."""
    layers, mix = 32, "q4_k_m"
    more = [i for i in range(layers) if kquants.mix_type(f"blk.{i}.attn_v.weight", (1024, 4096), mix, layers, False) == "Q6_K"]
    assert more == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert kquants.mix_type("blk.5.ffn_down.weight", (4096, 14336), mix, layers, False) == "Q4_K"
    assert kquants.mix_type("blk.6.ffn_down.weight", (4096, 14336), mix, layers, False) == "Q6_K"
    assert kquants.mix_type("blk.6.attn_q.weight", (4096, 4096), mix, layers, False) == "Q4_K"
    assert kquants.mix_type("output.weight", (128256, 4096), mix, layers, False) == "Q6_K"
    assert kquants.mix_type("token_embd.weight", (128256, 4096), mix, layers, False) == "Q4_K"
    assert kquants.mix_type("token_embd.weight", (49152, 576), mix, 30, True) == "Q8_0"  # SmolLM2: tied, 576
    assert kquants.mix_type("blk.0.attn_q.weight", (576, 576), mix, 30, True) == "Q5_0"
    assert kquants.mix_type("blk.0.attn_norm.weight", (576,), mix, 30, True) == "F32"


@pytest.fixture(scope="module")
def k_shaped_dir(tmp_path_factory) -> Path:
    """An 8-layer Llama whose rows are multiples of 256, so that every projection holds K-quant blocks."""
    from fixtures.synthetic import random_llama

    return random_llama(tmp_path_factory.mktemp("kshape") / "llama-256", hidden_size=256, intermediate_size=512,
                        num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=256, tie_word_embeddings=False)


@needs_llama_cpp
@pytest.mark.parametrize("mix", ["q4_k_m", "q6_k"])
def test_the_mix_is_what_llama_cpp_quantizes(k_shaped_dir, tmp_path, mix):
    """The workbook's file against llama.cpp's own `llama_model_quantize` of the same float32 file: every
    tensor in the same type, at least 99% of the quantized blocks the same bytes, the same error from
    the float32 weights within 1%, the same size; and llama.cpp opens the file."""
    f32 = gguf_write.write(k_shaped_dir, tmp_path / "f32.gguf", "f32").path
    mine = gguf_write.write(k_shaped_dir, tmp_path / f"{mix}.gguf", mix).path
    theirs = llama_cpp_check.quantize(f32, tmp_path / f"{mix}-llama-cpp.gguf", mix)
    result = llama_cpp_check.same_blocks(mine, theirs, f32)
    assert result["same_types"] and result["blocks"] > 1000, result
    assert result["same_blocks"] >= 0.99 and result["rmse"] <= 1.01 * result["rmse_llama_cpp"], result
    assert abs(result["size_mb"] - result["size_mb_llama_cpp"]) < 0.01 * result["size_mb"], result
    llm = llama_cpp_check.open_gguf(mine)
    assert llm.n_vocab() > 0
    llm.close()


def test_a_k_quant_refuses_rows_it_cannot_block():
    import gguf
    import torch

    with pytest.raises(ValueError, match="multiple of 256"):
        gguf_quantize.k_quantized(torch.zeros(4, 576), gguf.GGMLQuantizationType.Q4_K)
