"""Helpers used across stages: distributed processes, logging, pictures of labels."""
