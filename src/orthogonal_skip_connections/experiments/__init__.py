"""Thin Hydra apps: build from config, call the library, save into the run dir."""
