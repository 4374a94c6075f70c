"""The lungs, in one place: the network in torch and its exports (network), its inference without torch
(segmenter), the one lung finder every caller is handed (finder: the engine decided once), training (training),
Dice/IoU (metrics), overlays (overlay). Above models and data: data is handed a LungFinder and never imports it."""
