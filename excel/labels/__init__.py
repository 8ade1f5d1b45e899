"""From CAMs to pseudo labels: affinity refinement, PAR, and one image's label in each mode."""
