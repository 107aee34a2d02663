"""Tile embeddings: zarr arrays (arrays.py), their catalog registry (sets.py), reading bags
back (bags.py). The tile dataset, stain normalisation and the embed job run torch and are
imported only where models run."""
