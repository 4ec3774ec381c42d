"""The bottom layer: errors, devices and shardings, and the config-argument language."""
