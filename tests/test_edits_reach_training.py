"""Shown is what runs: what a learner adds to a step's visible call reaches training. Copies of the notebooks
are edited as a learner edits them, one step each, and run with papermill on the smoke config (01-05):

- 02: an argument added to the `LoraConfig(...)` call must be in the trained adapter's config;
- 03: a `.filter(...)` added right after the post's `load_dataset(...)` must take those rows out of the
  rows the trainer trains on;
- 04: an argument added to the `SFTConfig(...)` call must be in the trainer's arguments.

The test only needs the notebooks and papermill, so it runs on any version of the workbook: on the one
before steps handed over what they built, each failed with its edit alone (EDITS=02, 03 or 04 applies
one; docs/layout.md)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
FILTERED = "opposite"  # the default data's "opposite of ..." rows: about a fifth of them
PROBE = """
import json as _json
_rows = [trainer.processing_class.decode(r["input_ids"]) for r in trainer.train_dataset]
_json.dump({"rows": _rows, "max_grad_norm": trainer.args.max_grad_norm}, open(_probe, "w"))
"""


def notebook(number: str) -> dict:
    return json.loads(next((REPO / "notebooks").glob(f"{number}_*.ipynb")).read_text())


def edit(nb: dict, pattern: str, replace) -> dict:
    """`nb` with the one code cell whose source matches `pattern` (a regex) rewritten by `replace`."""
    cells = [c for c in nb["cells"] if c["cell_type"] == "code" and re.search(pattern, "".join(c["source"]), re.M)]
    assert len(cells) == 1, f"{pattern!r} is in {len(cells)} code cells"
    source = re.sub(pattern, replace, "".join(cells[0]["source"]), count=1, flags=re.M)
    cells[0]["source"] = source.splitlines(keepends=True)
    return nb


def edited(folder: Path) -> list[Path]:
    """01-05 as a learner edits them: one argument in 02's LoraConfig call, a filter after 03's
    load_dataset call, one argument in 04's SFTConfig call; a probe cell at the end of 05 writes down
    the trainer's rows and arguments."""
    books = {n: notebook(n) for n in ("01", "02", "03", "04", "05")}
    chosen = os.environ.get("EDITS", "02,03,04").split(",")
    if "02" in chosen:
        edit(books["02"], r"LoraConfig\(", "LoraConfig(layers_to_transform=[0], ")
    if "03" in chosen:
        edit(books["03"], r"^( *)(\w+) = load_dataset\(.*data_files.*\)$",
             lambda m: f"{m.group(0)}\n{m.group(1)}{m.group(2)} = {m.group(2)}.filter("
                       f"lambda row: {FILTERED!r} not in row['text'])")
    if "04" in chosen:
        edit(books["04"], r"SFTConfig\(\n", "SFTConfig(\n    max_grad_norm=0.3125,\n")
    books["05"]["cells"].append({"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                                 "source": PROBE.strip().splitlines(keepends=True)})
    paths = []
    for number, nb in books.items():
        paths.append(folder / next((REPO / "notebooks").glob(f"{number}_*.ipynb")).name)
        paths[-1].write_text(json.dumps(nb))
    return paths


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("edits")
    run_dir, probe = folder / "run", folder / "probe.json"
    for path in edited(folder):
        done = subprocess.run([sys.executable, "-m", "papermill", "-f", "configs/smoke.yaml", "-p", "run_dir",
                               str(run_dir), "-p", "_probe", str(probe), "--cwd", str(REPO / "notebooks"),
                               str(path), str(folder / f"out-{path.name}"), "--no-progress-bar"],
                              cwd=REPO, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return {"failed": f"{path.name}: {done.stderr[-3000:]}"}
    return {"run_dir": run_dir, "probe": json.loads(probe.read_text())}


def ran(trained) -> dict:
    assert "failed" not in trained, trained.get("failed")
    return trained


def test_an_argument_added_to_02s_call_is_in_the_trained_adapter(trained):
    adapter = ran(trained)["run_dir"] / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["layers_to_transform"] == [0]
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        layers = {int(re.search(r"layers\.(\d+)\.", k).group(1)) for k in f.keys()}
    assert layers == {0}  # SmolLM2 has 30 layers: only the first one has a LoRA


def test_a_filter_added_in_03_takes_its_rows_out_of_training(trained):
    rows = ran(trained)["probe"]["rows"]
    assert rows and not [r for r in rows if FILTERED in r]


def test_an_argument_added_to_04s_sftconfig_is_in_the_trainers_arguments(trained):
    assert ran(trained)["probe"]["max_grad_norm"] == 0.3125  # SFTConfig's default: 1.0
