"""The synthetic-world experiment: the world CLIP, the table of rows over seeds, and the shipped demo model."""
