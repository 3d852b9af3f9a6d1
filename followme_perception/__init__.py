"""Perception: segment camera frames with the followme FCN and locate the hero."""
