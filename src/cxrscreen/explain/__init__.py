"""Explanation: Grad-CAM heatmaps and overlays."""
