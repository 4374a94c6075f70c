"""Measures of a classifier shared by training (validation) and evaluation: below both, so neither imports the other."""
