"""The host side of on-chip training: the driver, datasets and the float32 reference."""
