"""Data: ALOHA episodes (HDF5), rosbag2 ingestion, resampling, statistics, training samples."""
