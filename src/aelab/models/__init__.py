"""The models: ``nets`` (the convolutional encoder and decoder), one module per family (``ae``),
``base`` (what every family gives the rest of aelab) and ``registry`` (``model.kind`` -> class)."""
