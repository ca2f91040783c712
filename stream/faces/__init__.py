"""Faces: detection backends, FFHQ alignment, and tracking with stable ids and smoothed landmarks."""
