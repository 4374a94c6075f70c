"""Models: the architecture registry, backbones, checkpoints and the lung segmenter."""
