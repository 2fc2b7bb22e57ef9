"""Data helpers: demo data, LLaVA-Video preparation, checks."""
