"""Image embedding operators (``image_embedding.*``)."""
