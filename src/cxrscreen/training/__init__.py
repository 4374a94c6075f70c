"""Training: configs, the training loop, distributed training, calibration and the OOD guard fit."""
