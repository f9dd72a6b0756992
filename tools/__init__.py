"""The command-line tools around the notebooks: the runner (python -m tools.run), its kernels, the
lab, sweeps and their comparison, and the refresh of the stored outputs. The notebooks never import them."""
