"""Subcommands of the `msm` CLI that live in the msm_jax package."""
