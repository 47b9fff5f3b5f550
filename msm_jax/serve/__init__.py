"""`msm serve`: an OpenAI-compatible HTTP server for msm-jax checkpoints.

`protocol` turns request bodies into jobs and results into response bodies (OpenAI's
shapes and error format), `engine` loads the model and batches concurrent jobs through
the JAX sampler, `multihost` hands each batch to every process of a slice, `http` is
the standard-library server that ties them together.
"""
