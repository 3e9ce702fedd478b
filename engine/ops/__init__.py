"""Operations: disk usage and clean-up, the long-lived clip-scoring worker."""
