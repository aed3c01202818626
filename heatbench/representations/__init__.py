"""One module per keypoint representation; each registers through the `heatbench.representations` entry-point group."""
