"""Models: the architecture registry (registry) and the modules that register themselves into it (efficientnet_lite,
monai_nets), building one by name (factory), the self-describing checkpoint (checkpoint, meta), the ONNX exporter
call and sessions (onnx), and the bundled models by name (bundled, weights/). The lung segmenter is in lungs/."""
