"""polybus."""
