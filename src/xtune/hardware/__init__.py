"""Hardware: what the run ran on. Profiles live in configs/trainer/; device-specific code lives here."""
