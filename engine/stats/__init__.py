"""Statistics for small paired test sets, and their command line."""
