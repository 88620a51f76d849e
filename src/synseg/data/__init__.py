"""Training data: caption sources, noun-phrase extraction and the image + phrase datasets."""
