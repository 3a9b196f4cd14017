"""Backends behind one interface: each module exposes NAME, SUFFIX, DEFAULT_ATOL, export(...),
predict(...) and runtime_versions(); `effconv.converters.convert` drives them."""
