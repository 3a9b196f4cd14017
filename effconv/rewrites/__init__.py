"""Mobile-friendly layers and the rewrites that put them into a model."""
