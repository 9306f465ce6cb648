"""Robot-side facts shared by drivers, sim, teleop and data conversion (no ROS)."""
