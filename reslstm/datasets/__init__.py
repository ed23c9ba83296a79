"""Dataset manifests (UCF-101, HMDB-51, folder-per-class, CSV), coarse categories and the synthetic demo set."""
