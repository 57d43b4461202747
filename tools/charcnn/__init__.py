"""Helpers of tools/reproduce_lebedev.py: the character renderer, the maxout CNN, its training loop."""
