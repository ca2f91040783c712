"""Latent edits: directions (files, SeFa, GANSpace, discovery), the W+ editor, temporal smoothing, and the
landmark attributes and identity descriptor that judge an edit."""
