"""Training and evaluation (installed as ``aperture_zoo.train``)."""
