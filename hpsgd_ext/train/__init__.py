"""The main job: HPSGD, DDP and periodic model averaging side by side (hpsgd-train)."""
