"""cosmos_aloha: thin rclpy nodes over cosmos_policy_core (one node per module)."""
