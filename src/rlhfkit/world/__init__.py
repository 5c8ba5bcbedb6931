"""The built-in demo world: data with a known ("gold") preference, small enough for a laptop CPU."""
