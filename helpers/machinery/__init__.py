"""What the steps rest on and a reader of a lesson need not open: weight formats, the run folder,
data files and their storage, checks of the parameters, measurement, checkpoints, memory, progress,
and the GGUF and Ollama writers. Nothing here imports a step module (tests/test_imports.py)."""
