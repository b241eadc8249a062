"""Text embedding operators (``text_embedding.*``)."""
