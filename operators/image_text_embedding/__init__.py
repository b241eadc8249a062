"""Operators that embed images and texts into one space (``image_text_embedding.*``)."""
