"""One training stage (midtraining or SFT) under jit over a device mesh: config, loss,
optimizer, sharded state, the jitted step, the run loop, metrics and the FLOPs count.
Entry point: `msm_jax.train.loop.train(RunConfig)` (`msm train CONFIG.yaml`)."""
