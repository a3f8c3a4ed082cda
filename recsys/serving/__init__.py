"""Lists from a model: the blended score and top-k, approximate top-k, recent popularity, the Recommender."""
