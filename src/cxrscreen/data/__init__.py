"""Data: dataset sources, image decoding, labels, splits, preprocessing, caching."""
