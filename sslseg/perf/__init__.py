"""Speed: the step benchmark (make bench) and the GPU check (make gpu-check)."""
