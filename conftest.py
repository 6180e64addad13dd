"""Doctest collection over xentcy/: skip the modules whose optional library is missing."""

import importlib.util

collect_ignore = ["setup.py"]
if importlib.util.find_spec("dask") is None:
    collect_ignore.append("xentcy/_dask.py")
if importlib.util.find_spec("cupy") is None:
    collect_ignore.append("xentcy/_cuda")
if importlib.util.find_spec("torch") is None:
    collect_ignore.append("xentcy/torch.py")
if importlib.util.find_spec("jax") is None:
    collect_ignore.append("xentcy/jax.py")
