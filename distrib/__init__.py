"""distrib."""
