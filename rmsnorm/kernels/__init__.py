"""Fast paths for the norms, each with the exact reference in `rmsnorm.functional` to fall back on."""
