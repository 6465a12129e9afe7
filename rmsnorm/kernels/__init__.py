"""Fast paths for the RMS-family norms. They take tensors and plain numbers only, never layer objects, and
fall back on the exact maths of `rmsnorm.reference`."""
