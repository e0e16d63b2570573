"""Sample-quality metrics: classifier accuracy and Fréchet distance in a classifier's features."""
