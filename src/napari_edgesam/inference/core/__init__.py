"""The stateless prediction core: encode an image, decode prompts; the predictor over them."""
