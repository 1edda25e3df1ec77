"""Numeric helpers the algorithms share: Flower arrays ↔ numpy without copies (``arrays``),
float64 weighted sums in fixed order (``weighted_sum``), and work split into cache-sized slices
(``slices``)."""
