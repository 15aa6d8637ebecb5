"""Registers xtune's Optuna sweeper with Hydra (plugins must live in the hydra_plugins package)."""
