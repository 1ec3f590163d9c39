"""What data engineers touch: recipes (recipes/*.yaml), cleaning steps (steps/*.py) and demo data (demo/)."""
