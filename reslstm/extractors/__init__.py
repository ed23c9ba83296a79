"""3D-CNN clip feature extractors behind one registry: ``create_extractor(name, stream, weights)``."""
