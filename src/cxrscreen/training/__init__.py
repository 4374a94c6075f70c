"""Training: the config (config), the loop (trainer) and its step (steps), the run's data (run_data), what an
epoch draws (sampler), augmentation and style (augment, style), the source adversary (adversary), distributed
training (distributed) and refitting a finished run's OOD guard (refit_guard). Calibration and the metrics are in
metrics/, the OOD guard itself in guard/."""
