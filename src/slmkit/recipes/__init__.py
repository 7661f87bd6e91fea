"""Recipes: YAML chains of prune -> recover -> quantize -> export -> evaluate, with a report."""

from slmkit.recipes.runner import plan, run_recipe
from slmkit.recipes.schema import Recipe, load_recipe, parse_recipe, shipped_recipes

__all__ = ["Recipe", "load_recipe", "parse_recipe", "plan", "run_recipe", "shipped_recipes"]
