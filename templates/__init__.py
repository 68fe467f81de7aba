"""Jinja templates shipped inside the wheel (the model card)."""
