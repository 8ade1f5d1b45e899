"""Applications: the commands built on the library (training, inference, demo, gallery, benchmark, ...)."""
