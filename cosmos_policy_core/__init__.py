"""cosmos_policy_core: the ROS-free library of cosmos_aloha.

Cosmos Policy (Cosmos-Predict2 DiT + Wan2.1 VAE with latent-frame injection) as a policy,
world model and value function, plus data, training, sim and export. Never imports rclpy.
"""

__version__ = "0.1.0"
