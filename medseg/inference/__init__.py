"""Preprocessing (and its inverse), tiling plans, the sliding-window engine and the file pipeline."""
