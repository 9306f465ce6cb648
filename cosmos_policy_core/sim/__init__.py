"""MuJoCo ALOHA simulation: the joint-space env, the mocap env, scripted demonstrations.

Importing `cosmos_policy_core.sim.env` selects MUJOCO_GL=egl unless the caller set a backend.
"""

import os

# mujoco binds its GL backend when first imported: pick headless EGL before anything imports it.
os.environ.setdefault("MUJOCO_GL", "egl")
