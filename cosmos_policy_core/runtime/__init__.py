"""What runs at deployment: the policy's staged `infer`, best-of-N planning, chunk execution and safety,
observation sync, image preprocessing, and the closed-loop rollout harness `sim eval` uses."""
