"""Looking at rows and vectors: tables and thumbnails, projections and plots, layer listings.

>>> from embedflow.views.display import text_table
>>> print(text_table([{"n": 1}]))
n
-
1
"""
