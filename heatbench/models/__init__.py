"""The shared backbone (ResNet + deconvolution neck) that every representation's head sits on."""
