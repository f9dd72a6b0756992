"""What the notebooks import: one module per step (see docs/layout.md); what they rest on is in
`helpers.machinery`, the command lines (the runner, the lab, sweeps) in `tools/`.

Heavy libraries (torch, transformers, unsloth) are imported inside functions, so that unsloth can be
imported before transformers when it is the chosen backend, and `import helpers` stays instant.
"""
import os

# Per-file progress bars of datasets/hub downloads would bury the lesson's output (and bloat stored
# notebooks); the training progress bar is the one worth watching. Set before those libraries load.
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
