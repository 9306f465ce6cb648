"""Training of Cosmos Policy: samples and augmentation, LR schedule, the single-stage trainer and the VAE fallback.

Import the submodules directly (`cosmos_policy_core.train.loop`, `.samples`, ...); this package keeps imports lazy.
"""
