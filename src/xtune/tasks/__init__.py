"""The Hydra tasks behind train.py, eval.py and xtune-prefetch (heavy imports live here)."""
