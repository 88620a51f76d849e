"""Training: `TrainConfig`, the `Trainer` loop, and the frozen-feature cache. `python -m synseg.train` = `synseg train`."""
